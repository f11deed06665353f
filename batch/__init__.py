"""sdfleet batch engine: model replicas, generation, manifests, outputs, the Ray pipeline.

Nothing is imported here on purpose: `import batch.manifest` must not pull in torch.
"""
