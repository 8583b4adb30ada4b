"""Clusters that run the role images: Kubernetes documents rendered from the lock
(``manifests``, pure) and the verb that confirms the images with the registry first
(``deploy``).

May import: errors, files, gpucheck, spec, lock, env, image
"""
