"""Merkle log, checkpoints, IPFS and Bitcoin publication."""
