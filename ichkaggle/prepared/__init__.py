"""prepared"""
