"""kcloud.models"""
