"""kcloud.serving"""
