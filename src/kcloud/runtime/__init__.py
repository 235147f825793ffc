"""kcloud.runtime"""
