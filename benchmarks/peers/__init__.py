"""Peer servers measured against modserve with the same weights, machine, workload and client."""
