"""matplotlib for the pictures runs write (loss curves, a series, CV against the leaderboard):
headless, imported only when a picture is drawn, and optional (without it the tables still are)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(fig, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` and close it (an open figure stays in memory)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
