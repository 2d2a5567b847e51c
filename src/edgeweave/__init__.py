"""edgeweave"""
