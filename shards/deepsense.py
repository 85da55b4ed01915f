"""DeepSense 6G reader for the full scenario index and for the task CSVs (beam and blockage series).

Layouts (paths in a CSV are relative to the CSV's folder):

1. full index ``scenarioN/scenarioN.csv``: ``index, unit1_rgb, unit1_pwr_60ghz, unit1_loc, unit1_lidar,
   unit1_radar, unit2_loc, unit2_loc_cal, unit1_beam_index, seq_index, time_stamp[UTC], ...``
   (an optional per-frame ``blockage`` column gives future-blockage labels: blocked within the next Δ
   frames by default, see :mod:`airbind.blockage`);
2. task CSVs such as ``scenario5_dev_train.csv`` (``index, unit2_loc_1, unit1_pwr_1, beam_index_1``);
3. blockage series CSVs (``index, unit1_pwr_60ghz_1..T, blockage_final`` or ``blockage_1..K``).

Beam labels in the files are 1-based; the schema's ``beam`` is 0-based and equals argmax of the power
vector. Rows whose file label disagrees are counted in :attr:`DeepSenseReader.beam_mismatches`.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards import fileio
from shards.errors import DataError
from airbind.blockage import DEFAULT_BLOCKAGE_LABEL, check_blockage_label, future_blockage
from airbind.geo import latlon_to_en
from shards.radar import RadarConfig, cube_to_points
from shards.records import BadInput, Record, resolve
from shards.schema import check_array, make_key

BLOCKAGE_COLUMNS = ("blockage", "unit1_blockage", "blockage_label")
_NUM = re.compile(r"(\d+)(?=\.[A-Za-z0-9]+$)")


@dataclass
class DeepSenseConfig:
    """Options of the DeepSense reader."""

    num_beams: int = 64
    past_steps: int = 8          # T of past_beam.npy (full layout)
    future_steps: int = 5        # length of meta future_beams
    blockage_horizon: int = 3    # Δ in frames for blockage_future (full layout, blockage_final)
    blockage_label: str = DEFAULT_BLOCKAGE_LABEL  # "within": blocked in any of frames t+1..t+Δ; "at": at t+Δ
    seq_block: int = 100         # task CSVs carry no seq_index: frames are grouped in blocks of this many
    prefer_calibrated_gps: bool = True
    radar: RadarConfig = RadarConfig()

    def __post_init__(self) -> None:
        check_blockage_label(self.blockage_label, self.blockage_horizon)


def _file_number(path: str) -> int | None:
    m = _NUM.search(Path(path.strip()).name)
    return int(m.group(1)) if m else None


def _parse_time(value: str) -> float | None:
    """``['16-45-05-799']`` → seconds of the day."""
    m = re.search(r"(\d+)[-:](\d+)[-:](\d+)[-:.](\d+)", value or "")
    if not m:
        return None
    h, mi, s, ms = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 10 ** len(m.group(4))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DataError(path, "CSV file not found")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration as exc:
            raise DataError(path, "empty CSV file") from exc
        rows = []
        for n, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                rows.append({"__error__": f"line {n}: {len(row)} fields, header has {len(header)}"})
                continue
            item = dict(zip(header, (c.strip() for c in row)))
            item["__line__"] = str(n)
            rows.append(item)
    return header, rows


def layout_of(header: list[str]) -> str:
    cols = set(header)
    if any(re.fullmatch(r"unit1_pwr_60ghz_\d+", c) for c in cols):
        return "blockage_series"
    if "unit1_pwr_60ghz" in cols:
        return "full"
    if any(re.fullmatch(r"unit1_pwr_\d+", c) for c in cols):
        return "task"
    raise ValueError(f"unrecognised DeepSense CSV header {header}")


def find_csvs(root: Path) -> list[Path]:
    """The index CSVs under ``root`` (a CSV file, a scenario folder, or a folder of scenario folders).

    A folder with a full index ``scenarioN.csv`` uses it; otherwise its task CSVs.
    """
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    found: list[Path] = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        csvs = sorted(folder.glob("*.csv"))
        full = [p for p in csvs if re.fullmatch(r"scenario\d+\.csv", p.name)]
        found.extend(full or csvs)
    if not found:
        raise DataError(root, "no DeepSense CSV index found (expected scenarioN/scenarioN.csv or task CSVs)")
    return found


class DeepSenseReader:
    """Index DeepSense 6G CSVs into :class:`Record` s; files are read by each record's ``load``."""

    source = "deepsense"

    def __init__(self, cfg: DeepSenseConfig = DeepSenseConfig(), bad: BadInput | None = None):
        self.cfg = cfg
        self.bad = bad or BadInput()
        self.beam_mismatches: list[str] = []

    # ---- helpers -------------------------------------------------------------------------------------
    def _power(self, path: Path) -> np.ndarray:
        return fileio.read_vector(path, expected=self.cfg.num_beams)

    def _scenario_name(self, csv_path: Path) -> str:
        m = re.match(r"(scenario\d+)", csv_path.name) or re.match(r"(scenario\d+)", csv_path.parent.name)
        return m.group(1) if m else csv_path.parent.name.replace(".", "_")

    @staticmethod
    def _official(csv_path: Path) -> str | None:
        m = re.search(r"_(train|val|test)\.csv$", csv_path.name)
        return m.group(1) if m else None

    def _reference(self, base: Path, rows: list[dict[str, str]], ue_col: str | None) -> tuple[float, float]:
        """Base-station position (unit1 GPS) when known, else the mean UE position of the scenario."""
        bs_file = None
        if rows and rows[0].get("unit1_loc"):
            bs_file = resolve(base, rows[0]["unit1_loc"])
        elif (base / "unit1" / "GPS_data" / "gps_location.txt").is_file():
            bs_file = base / "unit1" / "GPS_data" / "gps_location.txt"
        if bs_file is not None:
            return fileio.read_latlon(bs_file)
        pts = []
        for row in rows:
            try:
                pts.append(fileio.read_latlon(resolve(base, row[ue_col])))
            except (DataError, KeyError):
                continue
        if not pts:
            raise DataError(base, "no readable GPS file to define a reference position")
        arr = np.asarray(pts)
        return float(arr[:, 0].mean()), float(arr[:, 1].mean())

    def _gps(self, path: Path, ref: tuple[float, float]) -> np.ndarray:
        lat, lon = fileio.read_latlon(path)
        east, north = latlon_to_en(np.array(lat), np.array(lon), *ref)
        return np.array([float(east), float(north), lat, lon], dtype=np.float64)

    def _radar(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise DataError(path, f"not a plain .npy array ({exc})") from exc
        elif path.suffix.lower() == ".mat":
            mat = fileio.read_mat(path)
            arr = fileio._numeric_array(mat, path, ("data", "radar", "cube"))
        else:
            raise DataError(path, f"unsupported radar file type {path.suffix!r}")
        if arr.ndim == 3:
            if not np.isfinite(arr).all():
                raise DataError(path, "radar cube holds NaN/Inf values")
            return cube_to_points(arr, self.cfg.radar)
        if arr.ndim == 2 and arr.shape[1] == 5:
            return arr.astype(np.float32)
        raise DataError(path, f"radar data must be a (rx, samples, chirps) cube or N x 5 points, got {arr.shape}")

    def _beam_label(self, power: np.ndarray, label_1based: str | None, where: str) -> int:
        best = int(np.argmax(power))
        if label_1based not in (None, ""):
            try:
                file_label = int(float(label_1based)) - 1
            except ValueError as exc:
                raise DataError(where, f"beam index {label_1based!r} is not a number") from exc
            if file_label != best:
                self.beam_mismatches.append(f"{where}: file beam {file_label + 1} (1-based), argmax {best + 1}")
        return best

    # ---- layouts -------------------------------------------------------------------------------------
    def index(self, root: Path) -> list[Record]:
        records: list[Record] = []
        for csv_path in find_csvs(Path(root)):
            header, rows = _read_csv(csv_path)
            try:
                layout = layout_of(header)
            except ValueError as exc:
                self.bad(DataError(csv_path, str(exc)))
                continue
            good = []
            for row in rows:
                if "__error__" in row:
                    self.bad(DataError(csv_path, f"malformed row, {row['__error__']}"))
                else:
                    good.append(row)
            build = {"full": self._index_full, "task": self._index_task, "blockage_series": self._index_blockage}
            records.extend(build[layout](csv_path, header, good))
        return records

    def _index_full(self, csv_path: Path, header: list[str], rows: list[dict[str, str]]) -> list[Record]:
        base, scenario, cfg = csv_path.parent, self._scenario_name(csv_path), self.cfg
        ue_col = "unit2_loc_cal" if cfg.prefer_calibrated_gps and "unit2_loc_cal" in header else "unit2_loc"
        ref = self._reference(base, rows, ue_col if ue_col in header else None) if "unit2_loc" in header else None
        block_col = next((c for c in BLOCKAGE_COLUMNS if c in header), None)
        frames: list[dict[str, Any]] = []
        for row in rows:
            where = f"{csv_path}:{row['__line__']}"
            try:
                power = self._power(resolve(base, row["unit1_pwr_60ghz"]))
                seq = int(float(row["seq_index"])) if row.get("seq_index") else 0
                blocked = int(float(row[block_col])) if block_col and row.get(block_col) else None
                frames.append({"row": row, "power": power, "seq": seq, "blocked": blocked,
                               "beam": self._beam_label(power, row.get("unit1_beam_index"), where),
                               "time": _parse_time(row.get("time_stamp[UTC]", "")), "where": where})
            except (DataError, ValueError) as exc:
                self.bad(exc if isinstance(exc, DataError) else DataError(where, str(exc)))
        by_seq: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for f in frames:
            by_seq[f["seq"]].append(f)
        records = []
        for seq, seq_frames in sorted(by_seq.items()):
            seq_frames.sort(key=lambda f: int(float(f["row"]["index"])))
            for t, f in enumerate(seq_frames):
                row = f["row"]
                meta: dict[str, Any] = {
                    "beam": f["beam"], "scenario": scenario, "seq": seq, "time": f["time"],
                    "index": int(float(row["index"])),
                    "future_beams": [g["beam"] for g in seq_frames[t + 1: t + 1 + cfg.future_steps]],
                }
                if f["blocked"] is not None:
                    meta["blocked"] = f["blocked"]
                    ahead = [g["blocked"] for g in seq_frames[t + 1: t + 1 + cfg.blockage_horizon]]
                    if len(ahead) == cfg.blockage_horizon and None not in ahead:
                        meta["blockage_future"] = future_blockage(ahead, cfg.blockage_label)
                        meta["blockage_horizon"] = cfg.blockage_horizon
                        meta["blockage_label"] = cfg.blockage_label
                past = [g["power"] for g in seq_frames[t - cfg.past_steps: t]] if t >= cfg.past_steps else None
                records.append(Record(
                    key=make_key(self.source, scenario, seq, meta["index"]), source=self.source,
                    group=scenario, seq=str(seq), meta=meta,
                    load=self._full_loader(base, row, f["power"], past, ref, ue_col, meta, f["where"]),
                ))
        return records

    def _full_loader(self, base, row, power, past, ref, ue_col, meta, where):
        def load() -> dict[str, Any]:
            sample: dict[str, Any] = {"beam.npy": check_array("beam.npy", power, where)}
            if past is not None:
                sample["past_beam.npy"] = check_array("past_beam.npy", np.stack(past), where)
            gps_cell = row.get(ue_col) or row.get("unit2_loc")
            if ref is not None and gps_cell:
                sample["gps.npy"] = check_array("gps.npy", self._gps(resolve(base, gps_cell), ref), gps_cell)
            if row.get("unit1_rgb"):
                sample["image.jpg"] = fileio.read_jpeg_bytes(resolve(base, row["unit1_rgb"]))
            if row.get("unit1_lidar"):
                path = resolve(base, row["unit1_lidar"])
                sample["lidar.npy"] = check_array("lidar.npy", fileio.read_lidar(path), str(path))
            if row.get("unit1_radar"):
                path = resolve(base, row["unit1_radar"])
                sample["radar.npy"] = check_array("radar.npy", self._radar(path), str(path))
            sample["meta.json"] = dict(meta)
            return sample
        return load

    def _index_task(self, csv_path: Path, header: list[str], rows: list[dict[str, str]]) -> list[Record]:
        """Task CSVs: columns ``<name>_<k>``; the last step k is the sample, earlier powers are its past."""
        base, scenario, cfg = csv_path.parent, self._scenario_name(csv_path), self.cfg
        steps = lambda prefix: sorted(int(m.group(1)) for c in header if (m := re.fullmatch(prefix + r"_(\d+)", c)))
        pwr_steps, loc_steps, beam_steps = steps("unit1_pwr"), steps("unit2_loc"), steps("beam_index")
        ref = self._reference(base, rows, f"unit2_loc_{loc_steps[-1]}" if loc_steps else None) if loc_steps else None
        records = []
        for row in rows:
            where = f"{csv_path}:{row['__line__']}"
            try:
                pwr_path = resolve(base, row[f"unit1_pwr_{pwr_steps[-1]}"])
                power = self._power(pwr_path)
                label = row.get(f"beam_index_{beam_steps[-1]}") if beam_steps else None
                beam = self._beam_label(power, label, where)
                number = _file_number(row[f"unit1_pwr_{pwr_steps[-1]}"])
                number = number if number is not None else int(float(row["index"]))
                seq = int(float(row["seq_index"])) if row.get("seq_index") else number // cfg.seq_block
            except (DataError, ValueError, KeyError) as exc:
                self.bad(exc if isinstance(exc, DataError) else DataError(where, f"bad row ({exc!r})"))
                continue
            meta = {"beam": beam, "scenario": scenario, "seq": seq, "index": number, "time": None,
                    "future_beams": []}
            past_cols = [f"unit1_pwr_{k}" for k in pwr_steps[:-1]]
            loc_col = f"unit2_loc_{loc_steps[-1]}" if loc_steps else None
            records.append(Record(
                key=make_key(self.source, scenario, seq, number), source=self.source, group=scenario,
                seq=str(seq), meta=meta, official_split=self._official(csv_path),
                load=self._task_loader(base, row, power, past_cols, loc_col, ref, meta, where),
            ))
        return records

    def _task_loader(self, base, row, power, past_cols, loc_col, ref, meta, where):
        def load() -> dict[str, Any]:
            sample: dict[str, Any] = {"beam.npy": check_array("beam.npy", power, where)}
            if past_cols:
                past = np.stack([self._power(resolve(base, row[c])) for c in past_cols])
                sample["past_beam.npy"] = check_array("past_beam.npy", past, where)
            if loc_col and ref is not None:
                sample["gps.npy"] = check_array("gps.npy", self._gps(resolve(base, row[loc_col]), ref), where)
            for col, key in (("unit1_rgb", "image.jpg"), ("unit1_lidar", "lidar.npy"), ("unit1_radar", "radar.npy")):
                cells = sorted((c for c in row if re.fullmatch(col + r"_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1]))
                if not cells or not row[cells[-1]]:
                    continue
                path = resolve(base, row[cells[-1]])
                if key == "image.jpg":
                    sample[key] = fileio.read_jpeg_bytes(path)
                elif key == "lidar.npy":
                    sample[key] = check_array(key, fileio.read_lidar(path), str(path))
                else:
                    sample[key] = check_array(key, self._radar(path), str(path))
            sample["meta.json"] = dict(meta)
            return sample
        return load

    def _index_blockage(self, csv_path: Path, header: list[str], rows: list[dict[str, str]]) -> list[Record]:
        """Blockage series: T past power files; ``blockage_final`` is the label as given, and ``blockage_1..K``
        (the states K steps after the last input) give it by ``blockage_label``: any of them, or the last."""
        base, scenario, cfg = csv_path.parent, self._scenario_name(csv_path), self.cfg
        pwr_cols = sorted((c for c in header if re.fullmatch(r"unit1_pwr_60ghz_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1]))
        future_cols = sorted((c for c in header if re.fullmatch(r"blockage_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1]))
        if "blockage_final" in header:
            label_col, horizon = "blockage_final", cfg.blockage_horizon
        elif future_cols:
            label_col, horizon = None, int(future_cols[-1].rsplit("_", 1)[1])
        else:
            self.bad(DataError(csv_path, "blockage CSV has neither blockage_final nor blockage_1..K columns"))
            return []
        records = []
        for row in rows:
            where = f"{csv_path}:{row['__line__']}"
            try:
                index = int(float(row["index"]))
                cols = [label_col] if label_col else future_cols
                states = [float(row[c]) for c in cols]
                wrong = next((c for c, v in zip(cols, states) if v not in (0.0, 1.0)), None)
                if wrong is not None:
                    raise DataError(where, f"blockage label {wrong} must be 0 or 1, got {row[wrong]!r}")
                states = [int(v) for v in states]
                label = states[0] if label_col else future_blockage(states, cfg.blockage_label)
                seq = int(float(row["seq_index"])) if row.get("seq_index") else index // cfg.seq_block
            except (DataError, ValueError, KeyError) as exc:
                self.bad(exc if isinstance(exc, DataError) else DataError(where, f"bad row ({exc!r})"))
                continue
            meta = {"blockage_future": label, "blockage_horizon": horizon,
                    "blockage_label": "given" if label_col else cfg.blockage_label, "scenario": scenario,
                    "seq": seq, "index": index, "time": None}
            if not label_col:
                meta["blockage_series"] = states
            paths = [resolve(base, row[c]) for c in pwr_cols]

            def load(paths=paths, meta=meta, where=where) -> dict[str, Any]:
                past = np.stack([self._power(p) for p in paths])
                return {"past_beam.npy": check_array("past_beam.npy", past, where), "meta.json": dict(meta)}

            official = self._official(csv_path)
            key_index = f"{official}-{index}" if official else index  # indices restart in each split file
            records.append(Record(key=make_key(self.source, scenario, seq, key_index), source=self.source,
                                  group=scenario, seq=str(seq), meta=meta, load=load,
                                  official_split=official))
        return records
