"""Shared helpers of the airbind pipeline (paths and cache locations).

Every stage (twin, shards, encoders, pretrain, finetune, evaluation) may import this package; it imports
none of them.
"""
