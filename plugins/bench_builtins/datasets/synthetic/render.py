"""A vectorised torch ray caster for CLEVR-like scenes (no external renderer).

Every pixel of a batch of images casts one ray (or ``supersample``^2 rays): analytic hits
with spheres, boxes (in the cube's own frame) and capped cylinders, and the floor plane
z = 0. Shading is done in linear light and written as sRGB: Lambert diffuse from CLEVR's
key, fill and back lights, Blinn specular, metal reflecting a floor/sky environment tinted
by its colour. Floor shadows come from shadow rays cast from the floor point towards the
key and fill lights, blurred in image space into soft penumbrae, plus contact darkening.
Scene parameters come from ``scene.py`` (seeded numpy); nothing here is random, so a scene
renders the same on any device up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bench_builtins.datasets.synthetic.scene import COLOURS_SRGB, SHAPES, SIZES

INF = float("inf")
EPS = 1e-4

# CLEVR's lights as (azimuth, elevation, intensity): key, fill, back.
KEY = (-24.0, 41.0, 1.05)
FILL = (-139.0, 25.0, 0.30)
BACK = (103.0, 50.0, 0.45)
AMBIENT = 0.20
FLOOR_ALBEDO = 0.24  # linear; lit floor reads ~ sRGB 140 like CLEVR's ground


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-8) ** (1 / 2.4) - 0.055)


def _pow(x: torch.Tensor, p: float) -> torch.Tensor:
    """x ** p for x in [0, 1] that never yields denormals (they slow CPU float math ~20x)."""
    return torch.exp((p * torch.log(x.clamp_min(1e-12))).clamp_min(-80.0))


def _pack(scenes: Sequence[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    """Scene dicts -> padded (B, K) parameter tensors (built on the CPU, then moved)."""
    k = max(1, max(len(s["objects"]) for s in scenes))
    b = len(scenes)
    valid = torch.zeros(b, k, dtype=torch.bool)
    shape = torch.zeros(b, k, dtype=torch.long)
    metal = torch.zeros(b, k)
    cx, cy, size, theta = torch.zeros(b, k), torch.zeros(b, k), torch.full((b, k), 0.1), torch.zeros(b, k)
    colour = torch.zeros(b, k, 3)
    cam = torch.zeros(b, 4, dtype=torch.float64)
    key = torch.zeros(b, 2, dtype=torch.float64)
    for i, s in enumerate(scenes):
        c = s["camera"]
        cam[i] = torch.tensor([c["elevation"], c["azimuth"], c["distance"], c["fov"]], dtype=torch.float64)
        lights = s.get("lights", {})
        key[i] = torch.tensor([lights.get("key_azimuth", 0.0), lights.get("key_elevation", 0.0)])
        for j, o in enumerate(s["objects"]):
            r = SIZES[o["size"]]
            valid[i, j] = True
            shape[i, j] = SHAPES.index(o["shape"])
            metal[i, j] = 1.0 if o["material"] == "metal" else 0.0
            cx[i, j], cy[i, j] = o["x"], o["y"]
            # cube: half side r/sqrt(2); sphere: radius r; cylinder: radius r, half height r
            size[i, j] = r / math.sqrt(2) if o["shape"] == "cube" else r
            theta[i, j] = math.radians(o["rotation"])
            colour[i, j] = torch.tensor(COLOURS_SRGB[o["colour"]], dtype=torch.float32) / 255.0
    out = dict(
        valid=valid,
        shape=shape,
        metal=metal,
        cx=cx,
        cy=cy,
        size=size,
        cos=torch.cos(theta),
        sin=torch.sin(theta),
        colour=_srgb_to_linear(colour),
        cam=cam,
        key=key,
    )
    return {n: t.to(device) for n, t in out.items()}


def _light_vectors(scene: dict[str, Any]) -> list[tuple[tuple[float, float, float], float]]:
    """(direction towards the light, intensity) for key, fill and back lights, in float64."""
    lights = scene.get("lights", {})
    out = []
    for i, (az, el, intensity) in enumerate((KEY, FILL, BACK)):
        if i == 0:
            az, el = az + lights.get("key_azimuth", 0.0), el + lights.get("key_elevation", 0.0)
        a, e = math.radians(az), math.radians(el)
        out.append(((math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)), intensity))
    return out


def _screen_box(
    cam: dict[str, float], points: list[tuple[float, float, float]], w: int, h: int, margin: int
) -> tuple[int, int, int, int] | None:
    """Pixel bounding box (x0, x1, y0, y1) of 3D points seen by the camera, or None if off screen."""
    el, az = math.radians(cam["elevation"]), math.radians(cam["azimuth"])
    d = cam["distance"]
    pos = (d * math.cos(el) * math.cos(az), d * math.cos(el) * math.sin(az), d * math.sin(el))
    fwd = tuple(-x / d for x in pos)
    rn = math.hypot(fwd[0], fwd[1])
    right = (fwd[1] / rn, -fwd[0] / rn, 0.0)
    up = (
        right[1] * fwd[2] - right[2] * fwd[1],
        right[2] * fwd[0] - right[0] * fwd[2],
        right[0] * fwd[1] - right[1] * fwd[0],
    )
    tx = math.tan(math.radians(cam["fov"]) / 2)
    ty = tx * h / w
    xs, ys = [], []
    for p in points:
        rel = (p[0] - pos[0], p[1] - pos[1], p[2] - pos[2])
        depth = max(sum(a * b for a, b in zip(rel, fwd, strict=True)), 1e-3)
        sx = sum(a * b for a, b in zip(rel, right, strict=True)) / (depth * tx)
        sy = sum(a * b for a, b in zip(rel, up, strict=True)) / (depth * ty)
        xs.append((sx + 1) / 2 * w)
        ys.append((1 - sy) / 2 * h)
    x0, x1 = max(0, math.floor(min(xs)) - margin), min(w, math.ceil(max(xs)) + margin)
    y0, y1 = max(0, math.floor(min(ys)) - margin), min(h, math.ceil(max(ys)) + margin)
    return (x0, x1, y0, y1) if x0 < x1 and y0 < y1 else None


def _object_geometry(o: dict[str, Any]) -> tuple[float, float, float]:
    """(size parameter, footprint radius, height) of an object."""
    r = SIZES[o["size"]]
    if o["shape"] == "cube":
        s = r / math.sqrt(2)
        return s, s * math.sqrt(2), 2 * s
    return r, r, 2 * r


def _camera_rays(cam: torch.Tensor, width: int, height: int, ss: int, device: torch.device):
    """Origins (B, 3) and unit ray directions (B, P) x3 for a pinhole camera at the given pose."""
    el, az, dist, fov = (
        torch.deg2rad(cam[:, 0]),
        torch.deg2rad(cam[:, 1]),
        cam[:, 2],
        torch.deg2rad(cam[:, 3]),
    )
    pos = torch.stack(
        [dist * torch.cos(el) * torch.cos(az), dist * torch.cos(el) * torch.sin(az), dist * torch.sin(el)], 1
    )
    fwd = -pos / pos.norm(dim=1, keepdim=True)
    up0 = torch.tensor([0.0, 0.0, 1.0], dtype=cam.dtype, device=cam.device).expand_as(fwd)
    right = torch.linalg.cross(fwd, up0)
    right = right / right.norm(dim=1, keepdim=True)
    up = torch.linalg.cross(right, fwd)
    tx = torch.tan(fov / 2)
    ty = tx * height / width
    w, h = width * ss, height * ss
    u = (torch.arange(w, dtype=cam.dtype, device=cam.device) + 0.5) / w * 2 - 1
    v = 1 - (torch.arange(h, dtype=cam.dtype, device=cam.device) + 0.5) / h * 2
    uu = u.view(1, 1, w) * tx.view(-1, 1, 1)
    vv = v.view(1, h, 1) * ty.view(-1, 1, 1)
    d = [
        fwd[:, i].view(-1, 1, 1) + uu * right[:, i].view(-1, 1, 1) + vv * up[:, i].view(-1, 1, 1)
        for i in range(3)
    ]
    norm = torch.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    dirs = [(x / norm).reshape(len(cam), -1).to(device=device, dtype=torch.float32) for x in d]
    return pos.to(device=device, dtype=torch.float32), dirs


# Each hit function takes ray origins and directions (tensors or floats that broadcast) and
# one object's parameters, and returns the ray parameter t of the first hit, +inf on a miss.


def _hit_sphere(o, d, cx, cy, r):
    ox, oy, oz = o[0] - cx, o[1] - cy, o[2] - r
    b = ox * d[0] + oy * d[1] + oz * d[2]
    disc = b * b - (ox * ox + oy * oy + oz * oz - r * r)
    t = -b - torch.sqrt(disc.clamp_min(0))
    return torch.where((disc > 0) & (t > EPS), t, INF)


def _hit_box(o, d, cx, cy, s, cos, sin):
    px, py, pz = o[0] - cx, o[1] - cy, o[2] - s
    lx, ly = cos * px + sin * py, -sin * px + cos * py
    dx, dy = cos * d[0] + sin * d[1], -sin * d[0] + cos * d[1]
    tnear = tfar = None
    for p, q in ((lx, dx), (ly, dy), (pz, d[2])):
        q = torch.where(q.abs() < 1e-9, torch.full_like(q, 1e-9), q)
        t1, t2 = (-s - p) / q, (s - p) / q
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tnear = lo if tnear is None else torch.maximum(tnear, lo)
        tfar = hi if tfar is None else torch.minimum(tfar, hi)
    return torch.where((tnear <= tfar) & (tnear > EPS), tnear, INF)


def _hit_cylinder(o, d, cx, cy, r):
    ox, oy, oz = o[0] - cx, o[1] - cy, o[2]
    a = (d[0] * d[0] + d[1] * d[1]).clamp_min(1e-12)
    b = ox * d[0] + oy * d[1]
    disc = b * b - a * (ox * ox + oy * oy - r * r)
    ts = (-b - torch.sqrt(disc.clamp_min(0))) / a
    zs = oz + ts * d[2]
    side = torch.where((disc > 0) & (ts > EPS) & (zs >= 0) & (zs <= 2 * r), ts, INF)
    dz = torch.where(d[2].abs() < 1e-9, torch.full_like(d[2], -1e-9), d[2])
    tt = (2 * r - oz) / dz
    xt, yt = ox + tt * d[0], oy + tt * d[1]
    top = torch.where((tt > EPS) & (xt * xt + yt * yt <= r * r), tt, INF)
    return torch.minimum(side, top)


def _hit(shape: int, o, d, cx, cy, s, cos, sin):
    if shape == 1:
        return _hit_sphere(o, d, cx, cy, s)
    if shape == 0:
        return _hit_box(o, d, cx, cy, s, cos, sin)
    return _hit_cylinder(o, d, cx, cy, s)


def _normals(g: dict[str, torch.Tensor], hit):
    """Surface normals at hit points, given each point's object parameters ``g``; edges are
    softly rounded like CLEVR's bevelled models."""
    s = g["size"]
    px, py, pz = hit[0] - g["cx"], hit[1] - g["cy"], hit[2] - s
    sx, sy, sz = px / s, py / s, pz / s  # sphere
    c, sn = g["cos"], g["sin"]  # cube: superellipsoid-style normal bevels the edges
    lx, ly, lz = (c * px + sn * py) / s, (-sn * px + c * py) / s, pz / s
    ex = 10
    bx, by, bz = (_pow(q.abs().clamp(max=1), ex) * q.sign() for q in (lx, ly, lz))
    cbx, cby = c * bx - sn * by, sn * bx + c * by
    rho = torch.sqrt(px * px + py * py).clamp_min(1e-6)  # cylinder: radial side, flat top
    wr = _pow((rho / s).clamp(0, 1), ex)
    wt = _pow((pz / s).clamp(0, 1), ex)
    yx, yy, yz = wr * px / rho, wr * py / rho, wt
    shape = g["shape"]
    nx = torch.where(shape == 0, cbx, torch.where(shape == 1, sx, yx))
    ny = torch.where(shape == 0, cby, torch.where(shape == 1, sy, yy))
    nz = torch.where(shape == 0, bz, torch.where(shape == 1, sz, yz))
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz).clamp_min(1e-8)
    return nx / norm, ny / norm, nz / norm


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of (H, W) with zero padding (callers leave a margin of empty pixels)."""
    radius = max(1, int(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    y = x[None, None]
    y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, radius))
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(radius, 0))
    return y[0, 0]


def _render_batch(
    scenes: Sequence[dict[str, Any]], width: int, height: int, ss: int, device: torch.device
) -> torch.Tensor:
    """Ray-cast a batch. Intersections run only inside each object's (and each shadow's)
    screen bounding box, and shading of objects only on their pixels, which keeps the
    per-pixel work small: most of a CLEVR image is floor."""
    p = _pack(scenes, device)
    b = len(scenes)
    w, h = width * ss, height * ss
    pos, d = _camera_rays(p["cam"], width, height, ss, device)
    d = [x.view(b, h, w) for x in d]
    t_floor = -pos[:, 2].view(b, 1, 1) / d[2].clamp(max=-1e-6)
    fx, fy = pos[:, 0].view(b, 1, 1) + t_floor * d[0], pos[:, 1].view(b, 1, 1) + t_floor * d[1]
    t_buf = t_floor.clone()
    id_buf = torch.full((b, h, w), -1, dtype=torch.long, device=device)
    shadow = [torch.zeros(b, h, w, device=device) for _ in range(2)]
    ao = torch.ones(b, h, w, device=device)
    sigma = 1.6 * ss * width / 320
    pad = int(3 * sigma) + 2

    for i, scene in enumerate(scenes):
        cam, lights = scene["camera"], _light_vectors(scene)
        o = [pos[i, 0], pos[i, 1], pos[i, 2]]
        for k, obj in enumerate(scene["objects"]):
            s, big_r, height_ = _object_geometry(obj)
            cx, cy = float(obj["x"]), float(obj["y"])
            code = SHAPES.index(obj["shape"])
            cos, sin = math.cos(math.radians(obj["rotation"])), math.sin(math.radians(obj["rotation"]))
            corners = [
                (cx + ax * big_r, cy + ay * big_r, z)
                for ax in (-1, 1)
                for ay in (-1, 1)
                for z in (0, height_)
            ]
            box = _screen_box(cam, corners, w, h, 2)
            if box is not None:  # primary rays
                x0, x1, y0, y1 = box
                t = _hit(code, o, [x[i, y0:y1, x0:x1] for x in d], cx, cy, s, cos, sin)
                region = t_buf[i, y0:y1, x0:x1]
                closer = t < region
                t_buf[i, y0:y1, x0:x1] = torch.where(closer, t, region)
                id_buf[i, y0:y1, x0:x1] = torch.where(closer, k, id_buf[i, y0:y1, x0:x1])
            for li in range(2):  # floor shadows of the key and fill lights
                (lx, ly, lz), _ = lights[li]
                cast = [(x - z / lz * lx, y - z / lz * ly, 0.0) for x, y, z in corners]
                box = _screen_box(cam, corners + cast, w, h, pad)
                if box is None:
                    continue
                x0, x1, y0, y1 = box
                floor_o = [fx[i, y0:y1, x0:x1], fy[i, y0:y1, x0:x1], 1e-3]
                ld = [torch.full_like(floor_o[0], v) for v in (lx, ly, lz)]
                hard = (_hit(code, floor_o, ld, cx, cy, s, cos, sin) < INF).float()
                region = shadow[li][i, y0:y1, x0:x1]
                shadow[li][i, y0:y1, x0:x1] = torch.maximum(region, _gaussian_blur(hard, sigma))
            reach = 2.5 * s  # contact darkening fades out within ~2.5 sizes of the object
            ring = [
                (cx + ax * (big_r + reach), cy + ay * (big_r + reach), 0.0)
                for ax in (-1, 1)
                for ay in (-1, 1)
            ]
            box = _screen_box(cam, ring, w, h, 2)
            if box is not None:
                x0, x1, y0, y1 = box
                dist = (
                    torch.sqrt((fx[i, y0:y1, x0:x1] - cx) ** 2 + (fy[i, y0:y1, x0:x1] - cy) ** 2) - 0.75 * s
                )
                ao[i, y0:y1, x0:x1] *= 1 - 0.45 * torch.exp(
                    (-dist.clamp_min(0) / (0.35 * s)).clamp_min(-80.0)
                )

    # floor: ambient + lights (the plane's normal is +z), soft shadows, contact darkening;
    # CLEVR's ground brightens a little towards the scene centre
    light = torch.full((b, h, w), AMBIENT, device=device)
    per_scene = [_light_vectors(sc) for sc in scenes]
    for li in range(3):
        lz = torch.tensor([v[li][0][2] for v in per_scene], device=device).view(b, 1, 1)
        lit = 1.0 - shadow[li] * (0.93, 0.6)[li] if li < 2 else 1.0
        light = light + per_scene[0][li][1] * lz * lit
    rad = torch.sqrt(fx * fx + fy * fy)
    floor = FLOOR_ALBEDO * (1.08 - 0.012 * rad).clamp(0.8, 1.1) * light * ao
    img = _linear_to_srgb(floor).unsqueeze(1).expand(b, 3, h, w).contiguous()

    # objects: shade only their pixels
    bi, yi, xi = torch.nonzero(id_buf >= 0, as_tuple=True)
    if len(bi):
        k = id_buf[bi, yi, xi]
        g = {n: p[n][bi, k] for n in ("shape", "cx", "cy", "size", "cos", "sin", "metal")}
        dv = [x[bi, yi, xi] for x in d]
        t = t_buf[bi, yi, xi]
        hit = [pos[bi, c] + t * dv[c] for c in range(3)]
        n = _normals(g, hit)
        albedo = p["colour"][bi, k]  # (N, 3)
        ndv = -(n[0] * dv[0] + n[1] * dv[1] + n[2] * dv[2])
        ndv = ndv.clamp(0, 1)
        light_dirs = [
            [torch.tensor([v[li][0][c] for v in per_scene], device=device)[bi] for c in range(3)]
            for li in range(3)
        ]
        # key light shadows cast by the other objects of the same image
        occluded = torch.zeros_like(t)
        start = [hit[c] + 1e-3 * n[c] for c in range(3)]
        for j in range(p["valid"].shape[1]):
            other = p["valid"][bi, j] & (k != j)
            if not bool(other.any()):
                continue
            tj = torch.full_like(t, INF)
            for code in range(3):
                sel = other & (p["shape"][bi, j] == code)
                if bool(sel.any()):
                    idx = sel.nonzero(as_tuple=True)[0]
                    oo = [x[idx] for x in start]
                    ll = [x[idx] for x in light_dirs[0]]
                    pj = {n_: p[n_][bi[idx], j] for n_ in ("cx", "cy", "size", "cos", "sin")}
                    tj[idx] = _hit(code, oo, ll, pj["cx"], pj["cy"], pj["size"], pj["cos"], pj["sin"])
            occluded = torch.maximum(occluded, (tj < INF).float())
        diffuse = AMBIENT * (0.7 + 0.3 * n[2])
        spec_r = torch.zeros_like(t)
        spec_m = torch.zeros_like(t)
        for li, (_, _, intensity) in enumerate((KEY, FILL, BACK)):
            lx, ly, lz = light_dirs[li]
            vis = 1.0 - 0.85 * occluded if li == 0 else 1.0
            ndl = (n[0] * lx + n[1] * ly + n[2] * lz).clamp_min(0)
            diffuse = diffuse + intensity * ndl * vis
            hx, hy, hz = lx - dv[0], ly - dv[1], lz - dv[2]
            hn = torch.sqrt(hx * hx + hy * hy + hz * hz).clamp_min(1e-8)
            ndh = ((n[0] * hx + n[1] * hy + n[2] * hz) / hn).clamp_min(0)
            spec_r = spec_r + intensity * _pow(ndh, 8) * (ndl > 0) * vis
            spec_m = spec_m + intensity * _pow(ndh, 90) * (ndl > 0) * vis
        # metal reflects the environment: the lit floor below the horizon, a brighter sky above
        rz = dv[2] - 2 * (dv[0] * n[0] + dv[1] * n[1] + dv[2] * n[2]) * n[2]
        floor_env = FLOOR_ALBEDO * (AMBIENT + KEY[2] * 0.66)
        env = torch.where(
            rz < 0, torch.full_like(rz, floor_env), floor_env + (0.55 - floor_env) * _pow(rz.clamp(0, 1), 0.7)
        )
        fresnel = 0.04 + 0.96 * _pow(1 - ndv, 5)
        rubber = albedo * diffuse.unsqueeze(1) + 0.02 * spec_r.unsqueeze(1)
        metal = (
            albedo * (0.25 * diffuse + 1.6 * env).unsqueeze(1)
            + (0.6 * fresnel * env).unsqueeze(1)
            + (1.3 * spec_m).unsqueeze(1) * (0.5 + 0.5 * albedo)
        )
        colour = torch.where(g["metal"].unsqueeze(1) > 0.5, metal, rubber)
        img[bi, :, yi, xi] = _linear_to_srgb(colour)
    if ss > 1:
        img = F.avg_pool2d(img, ss)
    return (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


@torch.inference_mode()
def render_scenes(
    scenes: Sequence[dict[str, Any]],
    width: int = 320,
    height: int = 240,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    supersample: int = 1,
    internal_scale: float = 1.0,
    progress: Any = None,
) -> torch.Tensor:
    """Render frame dicts from ``sample_scenes`` into a uint8 tensor (N, height, width, 3).

    ``internal_scale`` < 1 ray-casts a smaller image and resizes it up (bilinear), trading
    sharpness for speed; ``supersample`` casts ss x ss rays a pixel for anti-aliased edges.
    ``progress(n)`` is called after each batch with the number of images done in it.
    """
    device = torch.device(device)
    iw, ih = max(8, round(width * internal_scale)), max(6, round(height * internal_scale))
    out = torch.empty(len(scenes), height, width, 3, dtype=torch.uint8)
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start : start + batch_size]
        img = _render_batch(batch, iw, ih, supersample, device)
        if (iw, ih) != (width, height):
            img = img.permute(0, 3, 1, 2).float()
            img = F.interpolate(img, size=(height, width), mode="bilinear", align_corners=False)
            img = img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out[start : start + len(batch)] = img
        if progress is not None:
            progress(len(batch))
    return out
