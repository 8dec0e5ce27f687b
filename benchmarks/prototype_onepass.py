"""Throwaway prototype for issue 9 ("One pass over the data"): measure before designing.

Stage 1, per granule, read once: the six columns of every beam, whole; filter first; one HEALPix call per
granule-beam at the child order; keep rows in the plan's parent cells; partition them by task; write the
partitions to a local intermediate (three layouts are measured).
Stage 2, per task: read its partitions from exactly the granules that have rows in it (known from stage 1),
one packed-key sort (local cell << 32 | order-preserving bits of the float32 h_li), bincount sums and
segment indexing for min / max / exact quantiles.

Then: compare with the current polaragg store (one single-threaded run into /tmp), CPU of the read floor
(process CPU, not wall: the 2 cores are shared), of stage 1, stage 2 and of the current tasks; the index
alternative (HDF5 chunks decompressed when each task hyperslices its own rows); peak RSS per stage in a
fresh subprocess. Writes benchmarks/results/prototype_onepass.{json,md}.

    .venv/bin/python benchmarks/prototype_onepass.py [--skip-current] [--work DIR]

Not production code: nothing under src/ uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ("latitude", "longitude", "h_li", "h_li_sigma", "delta_time", "atl06_quality_summary")
BEAMS = ("gt1l", "gt1r", "gt2l", "gt2r", "gt3l", "gt3r")
FILL = 3.4e38
# One stage-1 row: delta_time (float64), h_li and h_li_sigma as stored (float32), local child index.
ROW = np.dtype([("t", "<f8"), ("h", "<f4"), ("sigma", "<f4"), ("cell", "<u2")])  # widest first: aligned columns


def cpu() -> float:
    return time.process_time()


def maxrss_bytes() -> int:
    """Peak RSS of this process (VmHWM: ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# Setup


def load(recipe_path: str):
    warnings.simplefilter("ignore")
    from polaragg.recipe import load_recipe
    from polaragg.runner import plan_recipe
    from polaragg.sources import synthetic_folder

    recipe = load_recipe(recipe_path)
    synthetic_folder(recipe.source)
    plan = plan_recipe(recipe)
    return recipe, plan


class Layout:
    """Task of a child cell: what the plan defines (parents sorted, `split` equal child ranges each)."""

    def __init__(self, plan) -> None:
        self.parents = np.asarray(plan.parents, dtype=np.uint64)
        self.split = plan.split
        self.chunk = plan.chunk_cells
        self.child_order = plan.grid.child_order
        self.shift = np.uint64(plan.grid.shift)
        self.n_tasks = len(plan.tasks)
        self.quality_max = plan.filters.quality_max

    def task_and_local(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parent = cells >> self.shift
        pos = np.searchsorted(self.parents, parent)
        pos_c = np.minimum(pos, self.parents.size - 1)
        inside = self.parents[pos_c] == parent
        child = (cells & np.uint64((1 << int(self.shift)) - 1)).astype(np.int64)
        task = pos_c.astype(np.int64) * self.split + child // self.chunk
        return np.where(inside, task, -1), (child % self.chunk)


def valid(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (np.abs(x) < FILL)


# --------------------------------------------------------------------------------------------------
# Read floor (as benchmarks/run.py: six columns of every beam, whole, plain h5py), in process CPU


def read_floor(paths: list[str]) -> tuple[float, int]:
    import h5py

    rows = 0
    c0 = cpu()
    for path in paths:
        with h5py.File(path, "r") as f:
            for beam in sorted(k for k in f.keys() if k.startswith("gt")):
                group = f.get(f"{beam}/land_ice_segments")
                if group is None:
                    continue
                for name in COLUMNS:
                    arr = group[name][...]
                rows += arr.shape[0]
    return cpu() - c0, rows


# --------------------------------------------------------------------------------------------------
# Stage 1


def _inflate():
    """zlib inflate: ISA-L when importable (install it with pip --target into PROTO_PYLIB), else stdlib."""
    pylib = os.environ.get("PROTO_PYLIB", "/tmp/onepass/pylib")
    if os.path.isdir(pylib) and pylib not in sys.path:
        sys.path.append(pylib)
    try:
        from isal import isal_zlib

        return isal_zlib.decompress, "isal"
    except ImportError:
        import zlib

        return zlib.decompress, "zlib"


def read_direct(fd: int, dset, inflate) -> np.ndarray:
    """A whole 1-D dataset from its raw chunks: byte offsets from HDF5's chunk index, os.pread, inflate.

    Only deflate (+ shuffle on 1-byte integers, a no-op) is handled: what ATL06 uses.
    """
    n, dtype = dset.shape[0], dset.dtype
    c = dset.chunks[0]
    out = np.empty(-(-n // c) * c, dtype)
    view = out.view(np.uint8)
    step = c * dtype.itemsize

    def one(info):
        if info.filter_mask:
            raise ValueError("filter skipped on a chunk")
        raw = os.pread(fd, info.size, info.byte_offset)
        lo = (info.chunk_offset[0] // c) * step
        view[lo:lo + step] = np.frombuffer(inflate(raw), np.uint8)

    dset.id.chunk_iter(one)
    return out[:n]


def stage1_granule(path: str, lay: Layout, reader: str = "h5py") -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows of one granule in the plan's cells, sorted by task (stable), and rows per task.

    reader "h5py": plain dset[...]; "direct": raw chunks by pread + inflate (ISA-L if available).
    """
    import h5py
    import healpix_geo.nested as hpn

    parts_task, parts_rows = [], []
    stats = {"rows": 0, "kept": 0, "healpix_rows": 0}
    inflate = _inflate()[0] if reader == "direct" else None
    fd = os.open(path, os.O_RDONLY) if reader == "direct" else None
    try:
        with h5py.File(path, "r") as f:
            for beam in BEAMS:
                group = f.get(f"{beam}/land_ice_segments")
                if group is None:
                    continue
                if fd is None:
                    d = {name: group[name][...] for name in COLUMNS}
                else:
                    d = {name: read_direct(fd, group[name], inflate) for name in COLUMNS}
                lat, lon, h, s, t = d["latitude"], d["longitude"], d["h_li"], d["h_li_sigma"], d["delta_time"]
                stats["rows"] += lat.size
                # abs(x) < FILL is False for NaN and inf: one comparison per column is the whole validity test.
                keep = ((np.abs(h) < FILL) & (s > 0) & (s < FILL) & (np.abs(t) < FILL)
                        & (np.abs(lat) <= 90.0) & (np.abs(lon) <= 360.0))
                if lay.quality_max is not None:
                    keep &= d["atl06_quality_summary"] <= lay.quality_max
                idx = np.flatnonzero(keep)
                if idx.size == 0:
                    continue
                stats["healpix_rows"] += idx.size
                # num_threads=1: parallelism belongs to the executor, and process CPU stays comparable.
                cells = np.asarray(hpn.lonlat_to_healpix(lon[idx], lat[idx], lay.child_order, ellipsoid="WGS84",
                                                         num_threads=1), dtype=np.uint64)
                task, local = lay.task_and_local(cells)
                inside = np.flatnonzero(task >= 0)
                idx = idx[inside]
                parts_task.append(task[inside])
                parts_rows.append((t[idx], h[idx], s[idx], local[inside].astype(np.uint16)))
    finally:
        if fd is not None:
            os.close(fd)
    if parts_rows:
        task = np.concatenate(parts_task)
        small = np.uint16 if lay.n_tasks < 2**16 else np.int64  # 16-bit keys: numpy's stable sort is a radix sort
        order = np.argsort(task.astype(small), kind="stable")  # keeps beam / row order within a task (bit-identical sums)
        rows = {name: np.concatenate([p[k] for p in parts_rows])[order] for k, name in enumerate(ROW.names)}
        counts = np.bincount(task, minlength=lay.n_tasks)
    else:
        rows = {name: np.empty(0, ROW[name]) for name in ROW.names}
        counts = np.zeros(lay.n_tasks, np.int64)
    stats["kept"] = int(counts.sum())
    return rows, counts, stats


def segment_bytes(rows: dict, lo: int, hi: int) -> bytes:
    """One (granule, task) segment: its rows column after column (t, h, sigma, cell), contiguous."""
    return b"".join(rows[name][lo:hi].tobytes() for name in ROW.names)


def segment_rows(raw: bytes) -> dict:
    n = len(raw) // ROW.itemsize
    out, pos = {}, 0
    for name in ROW.names:
        dt = ROW[name]
        out[name] = np.frombuffer(raw, dt, count=n, offset=pos)
        pos += n * dt.itemsize
    return out


def concat_rows(parts: list[dict]) -> dict:
    if not parts:
        return {name: np.empty(0, ROW[name]) for name in ROW.names}
    return {name: np.concatenate([p[name] for p in parts]) for name in ROW.names}


class Intermediate:
    """Where stage 1 puts each granule's partitions and stage 2 reads a task's from.

    - per-pair: one .npy per (granule, task) with rows;
    - per-granule: one raw file per granule, rows sorted by task, offsets kept by the caller (stage 1's
      counts), a task reads its byte range;
    - per-granule-zstd: as per-granule, each task's segment compressed on its own (zstd 3), byte offsets kept.
    """

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.offsets: dict[int, np.ndarray] = {}  # granule -> byte offsets per task (n_tasks + 1)

    def write(self, g: int, rows: dict, counts: np.ndarray) -> None:
        bounds = np.concatenate(([0], np.cumsum(counts)))
        segs = {int(j): segment_bytes(rows, bounds[j], bounds[j + 1]) for j in np.flatnonzero(counts)}
        if self.kind == "per-pair":
            for j, blob in segs.items():
                (self.root / f"{g}-{j}.bin").write_bytes(blob)
            return
        if self.kind == "per-granule-zstd":
            import numcodecs

            codec = numcodecs.Zstd(level=3)
            segs = {j: codec.encode(b) for j, b in segs.items()}
        sizes = np.zeros(counts.size, np.int64)
        for j, b in segs.items():
            sizes[j] = len(b)
        (self.root / f"{g}.bin").write_bytes(b"".join(segs[j] for j in sorted(segs)))
        self.offsets[g] = np.concatenate(([0], np.cumsum(sizes)))

    def read(self, g: int, j: int) -> dict:
        if self.kind == "per-pair":
            return segment_rows((self.root / f"{g}-{j}.bin").read_bytes())
        lo, hi = int(self.offsets[g][j]), int(self.offsets[g][j + 1])
        fd = os.open(self.root / f"{g}.bin", os.O_RDONLY)
        try:
            raw = os.pread(fd, hi - lo, lo)
        finally:
            os.close(fd)
        if self.kind == "per-granule-zstd":
            import numcodecs

            raw = numcodecs.Zstd().decode(raw)
        return segment_rows(raw)

    def footprint(self) -> tuple[int, int]:
        files = list(self.root.iterdir())
        return len(files), sum(p.stat().st_size for p in files)


# --------------------------------------------------------------------------------------------------
# Stage 2


def f32_key(h: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 bits of float32 values (no NaN here)."""
    u = np.ascontiguousarray(h, dtype=np.float32).view(np.uint32)
    return np.where(u & np.uint32(0x80000000), ~u, u | np.uint32(0x80000000))


def f32_from_key(k: np.ndarray) -> np.ndarray:
    k = k.astype(np.uint32)
    u = np.where(k & np.uint32(0x80000000), k & np.uint32(0x7FFFFFFF), ~k)
    return u.view(np.float32)


def reduce_task(rows: dict, n_cells: int) -> np.ndarray:
    """The (n_cells x 15) block of polaragg.stats.STATS, from one packed-key sort and segment reductions."""
    from polaragg.stats import QUANTILES, STAT_INDEX, empty_block

    block = empty_block(n_cells)
    if rows["cell"].size == 0:
        return block
    col = STAT_INDEX
    cell = rows["cell"].astype(np.intp)
    h = rows["h"].astype(np.float64)
    w = 1.0 / np.square(rows["sigma"].astype(np.float64))
    t = rows["t"]
    count = np.bincount(cell, minlength=n_cells).astype(np.float64)
    has = count > 0
    sum_w = np.bincount(cell, weights=w, minlength=n_cells)
    sum_wh = np.bincount(cell, weights=w * h, minlength=n_cells)
    sum_h = np.bincount(cell, weights=h, minlength=n_cells)
    sum_t = np.bincount(cell, weights=t, minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum_h / count
        m2 = np.bincount(cell, weights=np.square(h - mean[cell]), minlength=n_cells)
        block[:, col["count"]] = count
        block[:, col["sum_w"]] = sum_w
        block[:, col["sum_wh"]] = sum_wh
        block[:, col["sum_h"]] = sum_h
        block[:, col["h_m2"]] = m2
        block[:, col["sum_t"]] = sum_t
        block[has, col["h_mean"]] = sum_wh[has] / sum_w[has]
        block[has, col["h_sigma"]] = 1.0 / np.sqrt(sum_w[has])
        block[has, col["h_var"]] = m2[has] / count[has]
        block[has, col["t_mean"]] = sum_t[has] / count[has]
    key = (rows["cell"].astype(np.uint64) << np.uint64(32)) | f32_key(rows["h"]).astype(np.uint64)
    key.sort()
    hs = f32_from_key(key & np.uint64(0xFFFFFFFF)).astype(np.float64)  # float32 -> float64 is monotonic, exact
    n = count[has].astype(np.intp)
    start = np.concatenate(([0], np.cumsum(n)[:-1]))
    block[has, col["h_min"]] = hs[start]
    block[has, col["h_max"]] = hs[start + n - 1]
    for name, q in QUANTILES.items():
        pos = q * (n - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n - 1)
        frac = pos - lo
        a, b = hs[start + lo], hs[start + hi]
        block[has, col[name]] = np.where(frac >= 0.5, b - (b - a) * (1.0 - frac), a + (b - a) * frac)
    return block


def task_granule_order(plan, counts: np.ndarray, gindex: dict[str, int]) -> list[list[int]]:
    """Per task: granules with rows in it, the plan's listed ones first in plan order, then any others
    (footprint misses, which the current code appends when it repairs)."""
    out = []
    for j, task in enumerate(plan.tasks):
        listed = [gindex[r.granule_id] for r in task.granules if r.granule_id in gindex]
        have = set(np.flatnonzero(counts[:, j]).tolist())
        out.append([g for g in listed if g in have] + sorted(have - set(listed)))
    return out


# --------------------------------------------------------------------------------------------------
# Index alternative: chunks decompressed when tasks hyperslice their own rows


def index_alternative(paths: list[str], lay: Layout) -> dict:
    import h5py
    import healpix_geo.nested as hpn

    floor_chunks = coord_chunks = payload_range = payload_exact = payload_needed = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            for beam in BEAMS:
                group = f.get(f"{beam}/land_ice_segments")
                if group is None:
                    continue
                lat, lon = group["latitude"][...], group["longitude"][...]
                n = lat.size
                csize = group["h_li"].chunks[0] if group["h_li"].chunks else n
                nch = -(-n // csize)
                floor_chunks += 6 * nch
                coord_chunks += 2 * nch
                ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 360)
                idx = np.flatnonzero(ok)
                cells = np.asarray(hpn.lonlat_to_healpix(lon[idx], lat[idx], lay.child_order, ellipsoid="WGS84",
                                                     num_threads=1), dtype=np.uint64)
                task, _ = lay.task_and_local(cells)
                inside = task >= 0
                idx, task = idx[inside], task[inside]
                if idx.size == 0:
                    continue
                chunk = idx // csize
                payload_needed += 4 * np.unique(chunk).size
                for j in np.unique(task):
                    cj = chunk[task == j]
                    payload_range += 4 * (int(cj.max()) - int(cj.min()) + 1)  # one [first, last] hyperslab
                    payload_exact += 4 * np.unique(cj).size  # only chunks holding the task's rows
    return {"floor_chunks": floor_chunks, "coord_chunks": coord_chunks, "payload_needed": payload_needed,
            "payload_hyperslab": payload_range, "payload_exact_rows": payload_exact,
            "index_total_hyperslab": coord_chunks + payload_range,
            "index_total_exact": coord_chunks + payload_exact,
            "ratio_hyperslab": (coord_chunks + payload_range) / floor_chunks,
            "ratio_exact": (coord_chunks + payload_exact) / floor_chunks}


# --------------------------------------------------------------------------------------------------
# Memory: peak RSS of one stage in a fresh process


def child_memory(args) -> None:
    """Run in a subprocess: baseline RSS after imports and setup, then peak RSS of one stage."""
    import h5py  # noqa: F401
    import healpix_geo.nested  # noqa: F401
    import tracemalloc

    lay = Layout.__new__(Layout)
    meta = json.loads(Path(args.layout).read_text())
    lay.parents = np.asarray(meta["parents"], dtype=np.uint64)
    lay.split, lay.chunk, lay.child_order = meta["split"], meta["chunk"], meta["child_order"]
    lay.shift, lay.n_tasks, lay.quality_max = np.uint64(meta["shift"]), meta["n_tasks"], meta["quality_max"]
    from polaragg import stats  # noqa: F401  (imported before the baseline)
    tracemalloc.start()

    if args.mem == "stage1":
        reset_peak()
        base = maxrss_bytes()
        rows, counts, _ = stage1_granule(args.path, lay)
        peak = maxrss_bytes()
        out = {"baseline": base, "peak": peak, "rows": int(counts.sum()),
               "traced_peak": tracemalloc.get_traced_memory()[1]}
    else:
        inter = Intermediate.__new__(Intermediate)
        inter.kind, inter.root = "per-granule", Path(args.inter)
        inter.offsets = {int(k): np.asarray(v) for k, v in json.loads(Path(args.inter, "_offsets.json").read_text()).items()}
        gs = [int(x) for x in args.granules.split(",")]
        reset_peak()
        base = maxrss_bytes()
        rows = concat_rows([inter.read(g, args.task) for g in gs])
        reduce_task(rows, lay.chunk)
        peak = maxrss_bytes()
        out = {"baseline": base, "peak": peak, "rows": int(rows["cell"].size),
               "traced_peak": tracemalloc.get_traced_memory()[1]}
    print(json.dumps(out))


def run_child(extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "demo.yaml"))
    p.add_argument("--work", default="/tmp/polaragg-onepass")
    p.add_argument("--reference", default=None, help="an existing polaragg store of the recipe (else one is run)")
    p.add_argument("--skip-current", action="store_true", help="do not time the current tasks")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mem", choices=("stage1", "stage2"), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--inter", help=argparse.SUPPRESS)
    p.add_argument("--granules", help=argparse.SUPPRESS)
    p.add_argument("--task", type=int, help=argparse.SUPPRESS)
    p.add_argument("--layout", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mem:
        child_memory(args)
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    recipe, plan = load(args.recipe)
    lay = Layout(plan)
    # Stage 1 runs over every granule the catalog places in any planned task (union of the plan's lists).
    ids = sorted({r.granule_id for t in plan.tasks for r in t.granules})
    url = {r.granule_id: r.url for t in plan.tasks for r in t.granules}
    paths = [url[i].removeprefix("file://") for i in ids]
    gindex = {g: i for i, g in enumerate(ids)}
    res: dict = {"machine": {"cores": os.cpu_count()}, "granules": len(paths), "tasks": lay.n_tasks,
                 "split": lay.split, "pairs_planned": sum(len(t.granules) for t in plan.tasks),
                 "cpu_measure": "time.process_time (process CPU, user+sys), best of repeats; not wall time"}
    log(f"{len(paths)} granules, {lay.n_tasks} tasks, {res['pairs_planned']} planned (task, granule) pairs")

    # Reference store from the current code (one single-threaded run), and its process CPU.
    ref = args.reference
    if ref is None:
        import polaragg

        ref = str(work / "reference.zarr")
        c0, w0 = cpu(), time.perf_counter()
        polaragg.run(recipe, store=ref, executor="single-threaded", overwrite=True, progress=False)
        res["current_run"] = {"process_cpu_s": cpu() - c0, "wall_s": time.perf_counter() - w0}
        from polaragg.ledger import read_records

        recs = read_records(ref)
        res["current_run"]["ledger_task_seconds_wall"] = sum(r.seconds for r in recs)
        res["current_run"]["observations"] = sum(r.observations for r in recs)
        res["current_run"]["peak_task_memory_bytes"] = max(r.peak_memory_bytes for r in recs)
        log(f"current run: {res['current_run']}")

    # Read floor.
    read_floor(paths)  # warm the page cache
    floors = [read_floor(paths) for _ in range(args.repeats)]
    floor = min(f[0] for f in floors)
    res["floor"] = {"cpu_s": floor, "passes": [f[0] for f in floors], "rows": floors[0][1]}
    log(f"floor: {floor:.3f} s CPU, {floors[0][1]:,} rows")

    # Current tasks (reduce only, no store write), process CPU.
    if not args.skip_current:
        c0 = cpu()
        for i in range(len(plan.tasks)):
            plan.run_task(i)
        res["current_tasks_cpu_s"] = cpu() - c0
        log(f"current tasks (reduce_parent only): {res['current_tasks_cpu_s']:.2f} s CPU")

    # Stage 1 compute only (read + filter + healpix + partition), best of repeats.
    times = []
    for _ in range(args.repeats):
        c0 = cpu()
        out = [stage1_granule(pth, lay) for pth in paths]
        times.append(cpu() - c0)
    counts = np.stack([o[1] for o in out])  # (granules, tasks)
    dtimes = []
    for _ in range(args.repeats):
        c0 = cpu()
        direct = [stage1_granule(pth, lay, "direct") for pth in paths]
        dtimes.append(cpu() - c0)
    same = all(all(np.array_equal(a[0][k], b[0][k]) for k in ROW.names) and np.array_equal(a[1], b[1])
               for a, b in zip(out, direct))
    del direct
    s1 = {"cpu_s": min(times), "passes": times, "direct_cpu_s": min(dtimes), "direct_passes": dtimes,
          "direct_inflate": _inflate()[1], "direct_identical": same,
          "rows_read": sum(o[2]["rows"] for o in out), "healpix_rows": sum(o[2]["healpix_rows"] for o in out),
          "rows_kept": int(counts.sum()), "pairs_with_rows": int(np.count_nonzero(counts))}
    planned = {(gindex[r.granule_id], t.index) for t in plan.tasks for r in t.granules}
    actual = {(int(g), int(j)) for g, j in zip(*np.nonzero(counts))}
    s1["pairs_missed_by_footprints"] = len(actual - planned)
    s1["pairs_planned_without_rows"] = len(planned - actual)
    res["stage1"] = s1
    log(f"stage 1: {s1}")

    # Intermediate layouts: write CPU, bytes, objects; stage 2 read + reduce CPU.
    orders = task_granule_order(plan, counts, gindex)
    res["layouts"] = {}
    blocks = None
    for kind in ("per-pair", "per-granule", "per-granule-zstd"):
        inter = Intermediate(kind, work / f"inter-{kind}")
        c0 = cpu()
        for g, (rows, c, _) in enumerate(out):
            inter.write(g, rows, c)
        wcpu = cpu() - c0
        nobj, nbytes = inter.footprint()
        rtimes, red_times = [], []
        for _ in range(args.repeats):
            c0 = cpu()
            task_rows = [concat_rows([inter.read(g, j) for g in orders[j]]) for j in range(lay.n_tasks)]
            c1 = cpu()
            blocks = [reduce_task(r, lay.chunk) for r in task_rows]
            c2 = cpu()
            rtimes.append(c1 - c0)
            red_times.append(c2 - c1)
        res["layouts"][kind] = {"write_cpu_s": wcpu, "objects": nobj, "bytes": nbytes,
                                "read_cpu_s": min(rtimes), "reduce_cpu_s": min(red_times),
                                "reads": int(sum(len(o) for o in orders))}
        log(f"layout {kind}: {res['layouts'][kind]}")
        if kind == "per-granule":
            (inter.root / "_offsets.json").write_text(json.dumps({str(k): v.tolist() for k, v in inter.offsets.items()}))
    rows_per_task = np.asarray(counts.sum(axis=0))
    granules_per_task = np.count_nonzero(counts, axis=0)
    res["rows_per_task"] = {"min": int(rows_per_task.min()), "median": float(np.median(rows_per_task)),
                            "p90": float(np.percentile(rows_per_task, 90)), "max": int(rows_per_task.max()),
                            "granules_per_task_median": float(np.median(granules_per_task)),
                            "granules_per_task_max": int(granules_per_task.max())}

    # Check against the current store.
    import zarr

    from polaragg.stats import STAT_NAMES, STATS

    root = zarr.open_group(ref, mode="r")
    mine = np.concatenate(blocks)
    check = {}
    for i, spec in enumerate(STATS):
        theirs = root[spec.name][:]
        ours = mine[:, i].astype(spec.dtype)
        if spec.dtype.startswith("int"):
            check[spec.name] = {"equal": bool(np.array_equal(ours, theirs)), "bit_identical": bool(np.array_equal(ours, theirs))}
            continue
        both_nan = np.isnan(ours) & np.isnan(theirs)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(both_nan, 0.0, np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-300))
        rel = np.where(ours == theirs, 0.0, rel)
        check[spec.name] = {"max_rel": float(np.nanmax(rel)) if rel.size else 0.0,
                            "nan_mismatch": int(np.count_nonzero(np.isnan(ours) != np.isnan(theirs))),
                            "bit_identical": bool(np.array_equal(ours, theirs, equal_nan=True)),
                            "cells_differing": int(np.count_nonzero((ours != theirs) & ~both_nan))}
    res["check"] = check
    res["check_ok"] = all(v.get("equal", True) and v.get("max_rel", 0.0) <= 1e-12 and not v.get("nan_mismatch")
                          for v in check.values())
    log(f"check vs current store: ok={res['check_ok']}, bit-identical: "
        f"{sum(v['bit_identical'] for v in check.values())}/{len(STAT_NAMES)}")

    # Index alternative.
    c0 = cpu()
    res["index_alternative"] = index_alternative(paths, lay)
    res["index_alternative"]["analysis_cpu_s"] = cpu() - c0
    log(f"index alternative: {res['index_alternative']}")

    # Memory: largest granule (stage 1) and largest task (stage 2), fresh processes.
    kept = counts.sum(axis=1)
    big_g = int(np.argmax([os.path.getsize(pth) for pth in paths]))
    big_t = int(np.argmax(rows_per_task))
    meta = work / "layout.json"
    meta.write_text(json.dumps({"parents": lay.parents.tolist(), "split": lay.split, "chunk": lay.chunk,
                                "child_order": lay.child_order, "shift": int(lay.shift), "n_tasks": lay.n_tasks,
                                "quality_max": lay.quality_max}))
    m1 = run_child(["--layout", str(meta), "--mem", "stage1", "--path", paths[big_g]])
    m2 = run_child(["--layout", str(meta), "--mem", "stage2", "--inter", str(work / "inter-per-granule"),
                    "--granules", ",".join(map(str, orders[big_t])), "--task", str(big_t)])
    res["memory"] = {"stage1_largest_granule": {**m1, "granule": ids[big_g], "rows_kept": int(kept[big_g]),
                                                "file_bytes": os.path.getsize(paths[big_g])},
                     "stage2_largest_task": {**m2, "task": big_t, "granules": len(orders[big_t])}}
    log(f"memory: {res['memory']}")

    # Ratios.
    best = res["layouts"]["per-granule"]
    s2 = best["read_cpu_s"] + best["reduce_cpu_s"]
    res["summary"] = {
        "floor_cpu_s": floor, "stage1_cpu_s": s1["cpu_s"], "stage1_write_cpu_s": best["write_cpu_s"],
        "stage2_cpu_s": s2,
        "onepass_total_cpu_s": s1["cpu_s"] + best["write_cpu_s"] + s2,
        "onepass_over_floor": (s1["cpu_s"] + best["write_cpu_s"] + s2) / floor,
        "stage1_over_floor": s1["cpu_s"] / floor,
        "stage1_direct_cpu_s": s1["direct_cpu_s"],
        "onepass_direct_total_cpu_s": s1["direct_cpu_s"] + best["write_cpu_s"] + s2,
        "onepass_direct_over_floor": (s1["direct_cpu_s"] + best["write_cpu_s"] + s2) / floor,
    }
    if "current_tasks_cpu_s" in res:
        res["summary"]["current_tasks_over_floor"] = res["current_tasks_cpu_s"] / floor
    if "current_run" in res:
        res["summary"]["current_run_over_floor"] = res["current_run"]["process_cpu_s"] / floor
    log(f"summary: {res['summary']}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prototype_onepass.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (RESULTS / "prototype_onepass.md").write_text(markdown(res))
    return 0


def markdown(r: dict) -> str:
    s = r["summary"]
    fl = s["floor_cpu_s"]
    lines = [
        "# One-pass prototype (issue 9): measured",
        "",
        f"{r['granules']} granules, {r['tasks']} tasks (split {r['split']}), demo recipe. CPU is **process CPU "
        "time** (`time.process_time`, user + sys) of this process, best of "
        f"{len(r['floor']['passes'])} warm passes, not wall time (the 2 cores are shared with other work).",
        "",
        "| phase | CPU s | / floor |",
        "|---|--:|--:|",
        f"| read floor (h5py, six columns, every beam, once) | {fl:.2f} | 1.00x |",
    ]
    if "current_run" in r:
        lines.append(f"| current single-threaded run, whole process (catalog, plan, tasks, store) | "
                     f"{r['current_run']['process_cpu_s']:.2f} | {r['current_run']['process_cpu_s'] / fl:.2f}x |")
    if "current_tasks_cpu_s" in r:
        lines.append(f"| current tasks (`reduce_parent` only, no store write) | {r['current_tasks_cpu_s']:.2f} | "
                     f"{r['current_tasks_cpu_s'] / fl:.2f}x |")
    lines.append(f"| stage 1: read (h5py), filter, HEALPix, partition | {s['stage1_cpu_s']:.2f} | {s['stage1_over_floor']:.2f}x |")
    lines.append(f"| stage 1 with direct chunk reads (pread + {r['stage1']['direct_inflate']} inflate) | "
                 f"{s['stage1_direct_cpu_s']:.2f} | {s['stage1_direct_cpu_s'] / fl:.2f}x |")
    for kind, L in r["layouts"].items():
        lines.append(f"| intermediate `{kind}`: write / stage-2 read / reduce | "
                     f"{L['write_cpu_s']:.3f} / {L['read_cpu_s']:.3f} / {L['reduce_cpu_s']:.3f} | "
                     f"{(L['write_cpu_s'] + L['read_cpu_s'] + L['reduce_cpu_s']) / fl:.2f}x |")
    lines.append(f"| **one pass total** (stage 1 + per-granule write + stage 2) | {s['onepass_total_cpu_s']:.2f} | "
                 f"**{s['onepass_over_floor']:.2f}x** |")
    lines.append(f"| **one pass total, direct chunk reads** | {s['onepass_direct_total_cpu_s']:.2f} | "
                 f"**{s['onepass_direct_over_floor']:.2f}x** |")
    lines += ["", "| intermediate | objects | bytes | reads by stage 2 |", "|---|--:|--:|--:|"]
    for kind, L in r["layouts"].items():
        lines.append(f"| `{kind}` | {L['objects']} | {L['bytes']:,} | {L['reads']} |")
    s1 = r["stage1"]
    lines += ["", f"Stage 1: {s1['rows_read']:,} rows read, {s1['healpix_rows']:,} through HEALPix (after the filter), "
              f"{s1['rows_kept']:,} kept; {s1['pairs_with_rows']} (granule, task) pairs with rows vs "
              f"{r['pairs_planned']} planned ({s1['pairs_planned_without_rows']} planned without rows, "
              f"{s1['pairs_missed_by_footprints']} missed by footprints)."]
    rp = r["rows_per_task"]
    lines.append(f"Rows per task: min {rp['min']:,}, median {rp['median']:,.0f}, p90 {rp['p90']:,.0f}, max {rp['max']:,}; "
                 f"granules with rows per task: median {rp['granules_per_task_median']:.0f}, max {rp['granules_per_task_max']}.")
    m = r["memory"]
    for name, v in m.items():
        lines.append(f"Peak RSS {name}: {v['peak'] / 2**20:.0f} MiB (baseline after imports {v['baseline'] / 2**20:.0f} MiB, "
                     f"+{(v['peak'] - v['baseline']) / 2**20:.0f} MiB; numpy/Python traced peak "
                     f"{v['traced_peak'] / 2**20:.1f} MiB for {v['rows']:,} rows, {v['traced_peak'] / max(v['rows'], 1):.0f} B/row).")
    ia = r["index_alternative"]
    lines += ["", f"Index alternative (HDF5 chunks decompressed): floor {ia['floor_chunks']:,}; one lat/lon pass "
              f"{ia['coord_chunks']:,} + payload per task [first, last] hyperslab {ia['payload_hyperslab']:,} = "
              f"{ia['index_total_hyperslab']:,} (**{ia['ratio_hyperslab']:.2f}x** floor); only chunks holding a task's "
              f"rows: {ia['index_total_exact']:,} ({ia['ratio_exact']:.2f}x); payload chunks needed at all: "
              f"{ia['payload_needed']:,}."]
    bad = {k: v for k, v in r["check"].items() if not v["bit_identical"]}
    lines += ["", f"Check against the current store: {'PASS' if r['check_ok'] else 'FAIL'} "
              f"(integers equal, floats within 1e-12 relative); bit-identical: "
              f"{len(r['check']) - len(bad)}/{len(r['check'])} statistics."]
    for k, v in bad.items():
        lines.append(f"- `{k}`: {v}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
