"""kcloud.devices"""
