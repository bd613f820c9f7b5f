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


def _direction(azimuth: torch.Tensor, elevation: torch.Tensor) -> tuple[torch.Tensor, ...]:
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    return torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)


def _pack(scenes: Sequence[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    """Scene dicts -> padded (B, K) parameter tensors (built on the CPU in float64, then moved)."""
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
        theta=theta,
        colour=_srgb_to_linear(colour),
        cam=cam,
        key=key,
    )
    return {n: t.to(device) for n, t in out.items()}


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


# Each hit function takes origins and directions (M, P) (or broadcastable) and per-object
# parameters (M, 1), and returns the ray parameter t of the first hit, +inf where it misses.


def _hit_sphere(o, d, cx, cy, r):
    ox, oy, oz = o[0] - cx, o[1] - cy, o[2] - r
    b = ox * d[0] + oy * d[1] + oz * d[2]
    disc = b * b - (ox * ox + oy * oy + oz * oz - r * r)
    t = -b - torch.sqrt(disc.clamp_min(0))
    return torch.where((disc > 0) & (t > EPS), t, INF)


def _hit_box(o, d, cx, cy, s, theta):
    c, sn = torch.cos(theta), torch.sin(theta)
    px, py, pz = o[0] - cx, o[1] - cy, o[2] - s
    lx, ly = c * px + sn * py, -sn * px + c * py
    dx, dy = c * d[0] + sn * d[1], -sn * d[0] + c * d[1]
    tnear = tfar = None
    for p, q in ((lx, dx), (ly, dy), (pz, d[2])):
        inv = 1.0 / torch.where(q.abs() < 1e-9, torch.full_like(q, 1e-9), q)
        t1, t2 = (-s - p) * inv, (s - p) * inv
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


def _hit_all(p: dict[str, torch.Tensor], origins, dirs) -> torch.Tensor:
    """t of every ray against every object slot: (B, K, P). ``origins`` are (B, 1) or (B, P)."""
    b, k = p["valid"].shape
    n = dirs[0].shape[1]
    t = torch.full((b, k, n), INF, device=dirs[0].device)
    for code, name in enumerate(SHAPES):
        bi, ki = torch.nonzero(p["valid"] & (p["shape"] == code), as_tuple=True)
        if len(bi) == 0:
            continue
        o = [x[bi] for x in origins]
        d = [x[bi] for x in dirs]
        cx, cy, s = (p[n_][bi, ki].unsqueeze(1) for n_ in ("cx", "cy", "size"))
        if name == "sphere":
            t[bi, ki] = _hit_sphere(o, d, cx, cy, s)
        elif name == "cube":
            t[bi, ki] = _hit_box(o, d, cx, cy, s, p["theta"][bi, ki].unsqueeze(1))
        else:
            t[bi, ki] = _hit_cylinder(o, d, cx, cy, s)
    return t


def _normals(p: dict[str, torch.Tensor], idx: torch.Tensor, hit):
    """Surface normals at hit points of object ``idx`` (B, P); edges softly rounded like CLEVR's."""
    g = {n: torch.gather(p[n], 1, idx) for n in ("shape", "cx", "cy", "size", "theta")}
    s = g["size"]
    px, py, pz = hit[0] - g["cx"], hit[1] - g["cy"], hit[2] - s
    # sphere
    sx, sy, sz = px / s, py / s, pz / s
    # cube: a superellipsoid-style normal bevels the edges slightly
    c, sn = torch.cos(g["theta"]), torch.sin(g["theta"])
    lx, ly, lz = (c * px + sn * py) / s, (-sn * px + c * py) / s, pz / s
    ex = 10
    bx, by, bz = (_pow(q.abs().clamp(max=1), ex) * q.sign() for q in (lx, ly, lz))
    cbx, cby = c * bx - sn * by, sn * bx + c * by
    # cylinder: side radial, top up, rounded rim
    rho = torch.sqrt(px * px + py * py).clamp_min(1e-6)
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
    """Separable blur of (B, H, W) with reflect padding."""
    radius = max(1, int(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    y = x.unsqueeze(1)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.squeeze(1)


def _light_dirs(p: dict[str, torch.Tensor], device: torch.device):
    b = p["cam"].shape[0]
    key = p["key"].to(torch.float32)
    out = []
    for i, (az, el, intensity) in enumerate((KEY, FILL, BACK)):
        a = torch.full((b,), az, device=device)
        e = torch.full((b,), el, device=device)
        if i == 0:
            a, e = a + key[:, 0], e + key[:, 1]
        lx, ly, lz = _direction(a, e)
        out.append(((lx.unsqueeze(1), ly.unsqueeze(1), lz.unsqueeze(1)), intensity))
    return out


def _render_batch(
    scenes: Sequence[dict[str, Any]], width: int, height: int, ss: int, device: torch.device
) -> torch.Tensor:
    p = _pack(scenes, device)
    b = len(scenes)
    w, h = width * ss, height * ss
    pos, d = _camera_rays(p["cam"], width, height, ss, device)
    o = [pos[:, i].unsqueeze(1) for i in range(3)]
    lights = _light_dirs(p, device)

    # primary visibility
    t_floor = torch.where(d[2] < -1e-6, -o[2] / d[2].clamp(max=-1e-6), torch.full_like(d[2], 1e4))
    t_obj = _hit_all(p, o, d)
    t_near, idx = t_obj.min(dim=1)
    on_obj = t_near < t_floor
    t = torch.where(on_obj, t_near, t_floor)
    hit = [o[i] + t * d[i] for i in range(3)]
    floor_pt = [o[i] + t_floor * d[i] for i in range(3)]

    # floor: soft shadows of the key and fill lights, blurred on the floor-plane image so the
    # penumbra never picks up object pixels; contact darkening under each object
    floor_pt[2] = torch.full_like(floor_pt[2], 1e-3)
    light_floor = torch.full_like(t, AMBIENT)
    for li, ((lx, ly, lz), intensity) in enumerate(lights):
        lit = torch.ones_like(t)
        if li < 2:
            ts = _hit_all(p, floor_pt, (lx.expand_as(t), ly.expand_as(t), lz.expand_as(t))).min(dim=1).values
            shadow = (ts < INF).float().view(b, h, w)
            lit = 1.0 - _gaussian_blur(shadow, sigma=1.6 * ss * width / 320).view(b, -1) * (
                0.93 if li == 0 else 0.6
            )
        light_floor = light_floor + intensity * lz * lit
    ao = torch.ones_like(t)
    for j in range(p["valid"].shape[1]):
        cx, cy, s = p["cx"][:, j : j + 1], p["cy"][:, j : j + 1], p["size"][:, j : j + 1]
        dist = torch.sqrt((floor_pt[0] - cx) ** 2 + (floor_pt[1] - cy) ** 2) - 0.75 * s
        ao = ao * (
            1
            - p["valid"][:, j : j + 1].float()
            * 0.45
            * torch.exp((-dist.clamp_min(0) / (0.35 * s)).clamp_min(-80.0))
        )
    # CLEVR's ground brightens a little towards the scene centre and fades with distance
    rad = torch.sqrt(floor_pt[0] ** 2 + floor_pt[1] ** 2)
    floor_tone = FLOOR_ALBEDO * (1.08 - 0.012 * rad).clamp(0.8, 1.1)
    floor_col = (floor_tone * light_floor * ao).unsqueeze(1).expand(b, 3, -1)

    # objects: gather each pixel's object parameters, shade diffuse + specular (+ reflection for metal)
    idx_c = idx.clamp_min(0)
    n = _normals(p, idx_c, hit)
    albedo = torch.stack([torch.gather(p["colour"][..., c], 1, idx_c) for c in range(3)], 1)
    metal = torch.gather(p["metal"], 1, idx_c)
    v = [-x for x in d]
    ndv = (n[0] * v[0] + n[1] * v[1] + n[2] * v[2]).clamp(0, 1)
    diffuse = AMBIENT * (0.7 + 0.3 * n[2])
    spec_r = torch.zeros_like(t)
    spec_m = torch.zeros_like(t)
    for (lx, ly, lz), intensity in lights:
        ndl = (n[0] * lx + n[1] * ly + n[2] * lz).clamp_min(0)
        diffuse = diffuse + intensity * ndl
        hx, hy, hz = lx + v[0], ly + v[1], lz + v[2]
        hn = torch.sqrt(hx * hx + hy * hy + hz * hz).clamp_min(1e-8)
        ndh = ((n[0] * hx + n[1] * hy + n[2] * hz) / hn).clamp_min(0)
        spec_r = spec_r + intensity * _pow(ndh, 12) * (ndl > 0)
        spec_m = spec_m + intensity * _pow(ndh, 90) * (ndl > 0)
    # metal reflects the environment: the lit floor below the horizon, a brighter sky above
    rz = d[2] - 2 * (d[0] * n[0] + d[1] * n[1] + d[2] * n[2]) * n[2]
    floor_env = FLOOR_ALBEDO * (AMBIENT + KEY[2] * 0.66)
    env = torch.where(
        rz < 0, torch.full_like(rz, floor_env), floor_env + (0.55 - floor_env) * _pow(rz.clamp(0, 1), 0.7)
    )
    fresnel = 0.04 + 0.96 * _pow(1 - ndv, 5)
    rubber_col = albedo * diffuse.unsqueeze(1) + 0.06 * spec_r.unsqueeze(1)
    metal_col = (
        albedo * (0.25 * diffuse + 1.6 * env).unsqueeze(1)
        + (0.6 * fresnel * env).unsqueeze(1)
        + (1.3 * spec_m).unsqueeze(1) * (0.5 + 0.5 * albedo)
    )
    obj_col = torch.where(metal.unsqueeze(1) > 0.5, metal_col, rubber_col)

    img = torch.where(on_obj.unsqueeze(1), obj_col, floor_col).view(b, 3, h, w)
    img = _linear_to_srgb(img)
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
