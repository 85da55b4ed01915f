"""Digital twin: vehicle street scenes (DeepSense 6G format) and human activity scenes (MM-Fi format).

The twin writes files on disk only; the readers in ``shards/`` read them exactly as they read real data.
"""
