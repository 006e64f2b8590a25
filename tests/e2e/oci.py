"""Build and read small OCI image layouts on disk, without a container engine.

The layout follows the OCI image-spec v1.0 `image-layout.md`: an `oci-layout` marker,
an `index.json` whose manifests carry `org.opencontainers.image.ref.name` as the tag,
and content-addressed blobs under `blobs/sha256/`. skopeo addresses such a layout as
`oci:DIR:TAG`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


class LayoutError(Exception):
    """An OCI layout is missing a tag, a blob or a file, or a blob fails its digest."""


@dataclass(frozen=True, slots=True)
class OciImage:
    """One tagged single-layer image in an OCI layout, with the digests that identify it."""

    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str
    file_name: str
    file_content: bytes

    @property
    def reference(self) -> str:
        """The skopeo transport reference of this image, `oci:DIR:TAG`."""
        return f"oci:{self.layout}:{self.tag}"


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string `sha256:<hex>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(file_name: str, content: bytes) -> bytes:
    # Fixed owner, mode and mtime make the tar depend on the file content only.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(name=file_name)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 0
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _canonical_json(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(layout: Path, tag: str, content: bytes, file_name: str = "hello.txt") -> OciImage:
    """Write a single-layer linux/amd64 image tagged `tag` into a new layout at `layout`.

    The layer is a gzipped tar with one file, `file_name`, containing `content`. Callers
    pass content that is unique per run, so every run pushes blobs the registry has
    not stored before.
    """
    layout.mkdir(parents=True, exist_ok=False)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))

    layer_tar = _layer_tar(file_name, content)
    diff_id = sha256_digest(layer_tar)
    # mtime=0 keeps the gzip header free of the build time.
    layer_gzip = gzip.compress(layer_tar, mtime=0)
    layer_digest = _write_blob(layout, layer_gzip)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = _canonical_json(config)
    config_digest = _write_blob(layout, config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": _descriptor(CONFIG_MEDIA_TYPE, config_digest, len(config_bytes)),
        "layers": [_descriptor(LAYER_MEDIA_TYPE, layer_digest, len(layer_gzip))],
    }
    manifest_bytes = _canonical_json(manifest)
    manifest_digest = _write_blob(layout, manifest_bytes)

    manifest_descriptor = _descriptor(MANIFEST_MEDIA_TYPE, manifest_digest, len(manifest_bytes))
    manifest_descriptor["annotations"] = {REF_NAME_ANNOTATION: tag}
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_descriptor],
    }
    (layout / "index.json").write_bytes(_canonical_json(index))

    return OciImage(
        layout=layout,
        tag=tag,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digest=layer_digest,
        diff_id=diff_id,
        file_name=file_name,
        file_content=content,
    )


def read_blob(layout: Path, digest: str) -> bytes:
    """Return the blob `digest` of `layout` after checking that its content matches."""
    algorithm, _, encoded = digest.partition(":")
    path = layout / "blobs" / algorithm / encoded
    if not path.is_file():
        raise LayoutError(f"blob {digest} not found in {layout}")
    data = path.read_bytes()
    if sha256_digest(data) != digest:
        raise LayoutError(f"blob {digest} in {layout} does not match its digest")
    return data


def _extract_file(layer_tar: bytes, file_name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(layer_tar), mode="r:") as archive:
        member = archive.extractfile(file_name)
        if member is None:
            raise LayoutError(f"{file_name} is not a regular file in the layer")
        return member.read()


def read_image(layout: Path, tag: str, file_name: str = "hello.txt") -> OciImage:
    """Read the single-layer image tagged `tag` from `layout`, such as one skopeo wrote.

    Raises `LayoutError` when the tag, a blob or `file_name` is missing, or when a blob
    or the uncompressed layer does not match its digest.
    """
    index = json.loads((layout / "index.json").read_bytes())
    descriptors = [
        descriptor
        for descriptor in index.get("manifests", [])
        if descriptor.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag
    ]
    if len(descriptors) != 1:
        raise LayoutError(
            f"expected one manifest tagged {tag} in {layout}, found {len(descriptors)}"
        )
    manifest_digest = descriptors[0]["digest"]

    manifest = json.loads(read_blob(layout, manifest_digest))
    config_digest = manifest["config"]["digest"]
    config = json.loads(read_blob(layout, config_digest))
    layers = manifest["layers"]
    if len(layers) != 1:
        raise LayoutError(f"expected one layer in {manifest_digest}, found {len(layers)}")
    layer_digest = layers[0]["digest"]
    layer_tar = gzip.decompress(read_blob(layout, layer_digest))
    diff_id = config["rootfs"]["diff_ids"][0]
    if sha256_digest(layer_tar) != diff_id:
        raise LayoutError(f"layer {layer_digest} does not match diff_id {diff_id}")

    return OciImage(
        layout=layout,
        tag=tag,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digest=layer_digest,
        diff_id=diff_id,
        file_name=file_name,
        file_content=_extract_file(layer_tar, file_name),
    )
