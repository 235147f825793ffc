"""kcloud.bench"""
