"""The block layer: block maps, the volumes' write caches, devices, import and export.

It works on storage handles (``ebsengine.storage``) and knows nothing of the engine facade
above it, nor of AWS or NBD.
"""
