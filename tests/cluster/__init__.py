"""Cluster tier: standalone Flink clusters from their bin/ scripts, TaskManager kills, a real browser."""
