"""The web viewer (viser): live renders of a field, training cameras, metrics, meshes.

Importing this package does not import viser; :class:`Viewer` does, and raises
:class:`~nfields.errors.NFieldsError` with the install command when it is missing.
"""

from nfields.viewer.camera import ViewCamera
from nfields.viewer.render_loop import RenderFn, RenderLoop
from nfields.viewer.server import Viewer, view_mesh

__all__ = ["ViewCamera", "RenderFn", "RenderLoop", "Viewer", "view_mesh"]
