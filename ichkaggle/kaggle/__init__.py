"""kaggle"""
