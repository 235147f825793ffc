"""kcloud.farm"""
