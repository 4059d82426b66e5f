"""Save timm's ImageNet weights as .safetensors files for the ichkaggle-timm-weights dataset.

Run on a machine with internet (and torch, timm, safetensors installed):

    python datasets/ichkaggle-timm-weights/fetch_weights.py                 # efficientnet_b0 + b5
    python datasets/ichkaggle-timm-weights/fetch_weights.py efficientnet_b3 --out DIR

Each ARCH becomes DIR/ARCH.safetensors (timm's default pretrained tag for that name), is
loaded back the way training loads it (timm ``pretrained_cfg_overlay=dict(file=...)``,
no network) to prove the file works offline, and is listed in DIR/SHA256SUMS. Then:
``ichkaggle push dataset ichkaggle-timm-weights``. ``--random-init`` writes untrained
weights without any download (to test the plumbing).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

DEFAULT_ARCHS = ("efficientnet_b0", "efficientnet_b5")  # the ones the bundled configs name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(arch: str, out: Path, random_init: bool = False) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    model = timm.create_model(arch, pretrained=not random_init)
    tag = (getattr(model, "pretrained_cfg", None) or {}).get("tag") or ""
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    path = out / f"{arch}.safetensors"
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"arch": arch, "timm_tag": tag, "pretrained": str(not random_init)})
    tmp.replace(path)
    # loaded back as ichkaggle.train.loop.build_learner does: from the file, never the hub
    again = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    first = next(iter(state))
    if not torch.equal(again.state_dict()[first], state[first]):
        raise SystemExit(f"{path}: does not load back into timm's {arch}")
    print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB  {arch}{'.' + tag if tag else ''}"
          f"{' (random init)' if random_init else ''}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="*", default=list(DEFAULT_ARCHS), metavar="ARCH", help="timm model names")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="the dataset folder")
    parser.add_argument("--random-init", action="store_true", help="untrained weights, no download (tests)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for arch in args.archs:
        save_weights(arch, out, args.random_init)
    files = sorted(out.glob("*.safetensors"))
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in files))
    print(f"{len(files)} file(s) in {out}; next: ichkaggle push dataset ichkaggle-timm-weights", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
