"""A farm of many nodes: replicas on a Ray cluster (`RayExecutor`), nodes joining and failing,
and the KubeRay manifests that run the same cluster on Kubernetes.

Ray does placement of processes, lifecycle and failure detection; requests never cross Ray's
object store: the gateway talks to each remote worker over the same framing it uses for a
local one. Import the modules you need; this package imports nothing at its top, so a Ray
worker that unpickles one actor class loads only that module's imports.
"""
