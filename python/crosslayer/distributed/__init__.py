"""Scale-out on Ray (the optional extra ``pip install 'crosslayer[ray]'``): a build of an `ImageIndex` whose shards are
encoded by Ray actors and committed by the driver (`build_on_ray`), and a search over segment groups held by actors
(`ShardedIndex`). Nothing here imports Ray until it is used; everything else in crosslayer works without it."""

from crosslayer.distributed.build import BuildReport, build_on_ray
from crosslayer.distributed.cluster import RayMissingError, ray_session
from crosslayer.distributed.sharded import ShardedIndex

__all__ = ["BuildReport", "RayMissingError", "ShardedIndex", "build_on_ray", "ray_session"]
