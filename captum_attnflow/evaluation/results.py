"""Results of an evaluation: the per-example stream on disk and the summary table.

* :class:`ResultStore` appends one JSON line per example to ``DIR/examples.jsonl`` as soon as the
  example is finished (``status`` ``"ok"``, ``"error"`` with its message, or ``"lost"`` when the
  worker computing it died) and keeps the run's settings in ``DIR/config.json``. Reopened with
  ``resume=True`` it reads what is there — dropping a line cut short by a kill — and tells the
  runner which examples are already done.
* :class:`ResultTable` is the tidy summary: one record per (method, layer, metric) with mean,
  population std, a 95% percentile-bootstrap interval of the mean, and how many examples had a
  defined value.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from captum_attnflow.evaluation.faithfulness import bootstrap_interval
from captum_attnflow.utils.files import DirectoryLock, writable_directory
from captum_attnflow.evaluation.metrics import summarize

#: metric names, in table order, and what they mean
METRICS: dict[str, str] = {
    "spearman_blank_out": "Spearman rho with blank-out scores (higher: closer to the model's own ablation)",
    "spearman_gradient": "Spearman rho with input-gradient scores",
    "aopc_comprehensiveness": "AOPC comprehensiveness, p(y|x) - p(y|x without top-k) (higher is better)",
    "aopc_sufficiency": "AOPC sufficiency, p(y|x) - p(y|only top-k) (lower is better)",
}
COLUMNS: tuple[str, ...] = ("method", "layer", "metric", "mean", "std", "ci_low", "ci_high", "count", "undefined")
EXAMPLES_FILE = "examples.jsonl"
CONFIG_FILE = "config.json"
DONE_STATUSES = ("ok", "error")


def json_safe(value: Any) -> Any:
    """``value`` with numpy types turned into Python ones and NaN/inf floats into ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _in_memory(record: dict[str, Any]) -> dict[str, Any]:
    """What a store with a directory keeps in memory: the record without its per-token scores
    (they stay on disk; thousands of long examples would not fit)."""
    return {key: value for key, value in record.items() if key != "scores"}


def _read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse ``examples.jsonl``: ``(records, bytes of complete lines)``; a last line cut short by
    a kill is left out; a corrupt line before it raises ``ValueError``."""
    lines = path.read_bytes().splitlines(keepends=True)
    records, keep = [], 0
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{path} line {number} is corrupt (not JSON); fix or delete it.") from None
                break
        keep += len(line)
    return records, keep


def read_examples(directory: str | Path) -> list[dict[str, Any]]:
    """The ``ok`` example records of a run's directory, with their per-token ``scores``, by index.

    (:attr:`Evaluation.examples` leaves the scores out when the run streams to a directory.)
    """
    path = Path(directory) / EXAMPLES_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no {EXAMPLES_FILE}; pass the out directory of an evaluation.")
    latest = {int(r["index"]): r for r in _read_records(path)[0]}
    return [latest[i] for i in sorted(latest) if latest[i]["status"] == "ok"]


STATUSES = ("ok", "error", "lost")


def check_records(records: Sequence[Any], path: Path, config: Mapping[str, Any],
                  metric_keys: Sequence[str] = tuple(METRICS)) -> None:
    """Refuse ``examples.jsonl`` records that this run could not have written, before any work.

    Each must be an object with an integer ``index`` within the data (``config["data_examples"]``)
    and a ``status`` in :data:`STATUSES`; an ``ok`` record needs ``metrics`` for every method of
    the run with every one of ``metric_keys`` (the run's metrics: :data:`METRICS` for
    ``evaluate``), each a list (one value per row), a number or null; ``error``/``lost`` records
    need a message.

    Raises:
        ValueError: naming the file, the record's line and what is wrong.
    """
    total = config.get("data_examples")
    methods = config.get("methods") or []
    for number, record in enumerate(records, 1):
        where = f"cannot resume: {path} record {number}"
        if not isinstance(record, dict):
            raise ValueError(f"{where} is a JSON {type(record).__name__}, not an example record; fix or delete it.")
        index = record.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"{where} has no integer 'index' (keys {sorted(record)[:6]}); fix or delete it.")
        if isinstance(total, int) and not 0 <= index < total:
            raise ValueError(f"{where} has index {index}, outside the run's {total} examples (0..{total - 1}); "
                             f"fix or delete it.")
        status = record.get("status")
        if status not in STATUSES:
            raise ValueError(f"{where} has status {status!r}; expected one of {STATUSES}.")
        if status != "ok":
            if not isinstance(record.get("error"), str):
                raise ValueError(f"{where} has status {status!r} without an 'error' message.")
            continue
        metrics = record.get("metrics")
        bad = (not isinstance(metrics, dict) or any(
            not isinstance(metrics.get(m), dict)
            or any(k not in metrics[m] or not isinstance(metrics[m][k], (list, int, float, type(None)))
                   for k in metric_keys) for m in methods))
        if bad:
            raise ValueError(f"{where} (example {index}) lacks the metrics of the methods {methods}; fix or delete it.")


#: config keys that identify the model and the data of a run (compared on resume)
IDENTITY_KEYS: dict[str, str] = {"model_sha256": "model", "data_sha256": "data", "data_examples": "data"}


class ResultStore:
    """Per-example results, kept in memory and, with a directory, streamed to ``examples.jsonl``.

    With a directory, the in-memory copy leaves out the per-token scores
    (:func:`read_examples` reads them back), and the directory is locked
    (:class:`~captum_attnflow.utils.files.DirectoryLock`) until :meth:`close`.

    Args:
        directory: output folder (created and checked writable), or ``None`` to keep results in
            memory only.
        config: the run's settings, including the identity of its model (``model_sha256``) and
            data (``data_sha256``, ``data_examples``); with ``resume`` they must equal the stored ones.
        resume: continue a run found in ``directory``.
        metric_keys: the metrics every ``ok`` record holds per method (checked on resume;
            default ``evaluate``'s :data:`METRICS`).

    Raises:
        ValueError: ``directory`` is a file or not writable; another run holds its lock
            (:class:`~captum_attnflow.utils.files.LockedError`); it already holds results and ``resume``
            is False; or ``resume`` finds another model, other data, other settings or a corrupt
            line before the last one.
    """

    def __init__(self, directory: str | Path | None, config: Mapping[str, Any], *, resume: bool = False,
                 metric_keys: Sequence[str] = tuple(METRICS)) -> None:
        self.directory = None if directory is None else Path(directory)
        self.metric_keys = tuple(metric_keys)
        self.records: dict[int, dict[str, Any]] = {}
        self._lock: DirectoryLock | None = None
        config = json_safe(dict(config))
        self.config = config
        if self.directory is None:
            return
        writable_directory(self.directory, "out")
        self._lock = DirectoryLock(self.directory)
        self._lock.acquire()
        try:
            examples = self.directory / EXAMPLES_FILE
            if examples.exists() and examples.stat().st_size > 0:
                if not resume:
                    raise ValueError(
                        f"{self.directory} already holds the results of another run ({EXAMPLES_FILE}); pass "
                        f"resume=True (--resume) to continue that run, or choose another output directory."
                    )
                self._check_config(config)
                self._load(examples)
            (self.directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            self._stream = examples.open("a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise

    def _check_config(self, config: dict[str, Any]) -> None:
        path = self.directory / CONFIG_FILE
        try:
            stored = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            raise ValueError(f"cannot resume {self.directory}: {path} is corrupt (not JSON).") from None
        differing = sorted(key for key in set(stored) | set(config) if stored.get(key) != config.get(key))
        if not differing:
            return
        problems = []
        if "model_sha256" in differing:
            problems.append(
                f"the model differs (weights sha256 {_short(stored.get('model_sha256'))} stored, "
                f"{_short(config.get('model_sha256'))} now)"
            )
        if {"data_sha256", "data_examples"} & set(differing):
            problems.append(
                f"the data differs ({stored.get('data_examples')} examples with sha256 "
                f"{_short(stored.get('data_sha256'))} stored, {config.get('data_examples')} with "
                f"{_short(config.get('data_sha256'))} now)"
            )
        settings = [k for k in differing if k not in IDENTITY_KEYS]
        if settings:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {config.get(k)!r}" for k in settings)
            problems.append(f"its run used other settings ({details})")
        raise ValueError(
            f"cannot resume {self.directory}: {'; '.join(problems)}. Resume with the same model, data and "
            f"settings, or choose another output directory."
        )

    def _load(self, path: Path) -> None:
        records, keep = _read_records(path)
        check_records(records, path, self.config, self.metric_keys)
        for record in records:
            self.records[int(record["index"])] = _in_memory(record)
        data_ends_with_newline = path.read_bytes()[:keep].endswith(b"\n")
        with path.open("r+b") as handle:  # drop the line a kill cut short
            handle.truncate(keep)
            if keep and not data_ends_with_newline:
                handle.seek(keep)
                handle.write(b"\n")

    def done(self) -> set[int]:
        """Indices of examples finished in an earlier or this run (``ok`` or ``error``)."""
        return {index for index, record in self.records.items() if record["status"] in DONE_STATUSES}

    def write(self, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (the latest record of an index wins) and append it to the stream."""
        record = json_safe(dict(record))
        self.records[int(record["index"])] = record if self.directory is None else _in_memory(record)
        if self.directory is not None:
            self._stream.write(json.dumps(record, sort_keys=True) + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Close the stream and release the directory's lock."""
        if self.directory is not None:
            self._stream.close()
            self._lock.release()

    def by_status(self, status: str) -> list[dict[str, Any]]:
        """Records with ``status``, sorted by example index."""
        return [self.records[i] for i in sorted(self.records) if self.records[i]["status"] == status]


class ResultTable:
    """Tidy summary: a list of records with the keys of :data:`COLUMNS`.

    ``layer`` is 1-based for per-layer (attention) methods and ``None`` for the others; ``mean``
    and ``std`` (population) are over the examples with a defined value (``count``; Spearman's ρ is
    undefined for constant scores, counted in ``undefined``); ``ci_low``/``ci_high`` bound a
    percentile-bootstrap interval of the mean. ``protocol``: a line naming the AOPC protocol of
    the run (printed above the table).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], protocol: str | None = None) -> None:
        self.records = [dict(r) for r in records]
        self.protocol = protocol

    @classmethod
    def from_examples(
        cls,
        examples: Sequence[Mapping[str, Any]],
        per_layer: Mapping[str, bool],
        *,
        confidence: float = 0.95,
        resamples: int = 1000,
        seed: int = 0,
        protocol: str | None = None,
    ) -> "ResultTable":
        """Summarise the ``metrics`` of ``ok`` example records (see :class:`ResultStore`).

        Args:
            examples: per-example records, each with ``metrics[method][metric]`` = a list with one
                value per layer row (``None`` for undefined).
            per_layer: method name -> whether its rows are layers ``1..L``.
            confidence: the confidence level of the bootstrap interval.
            resamples: the number of bootstrap resamples.
            seed: the seed of the bootstrap resampling.
            protocol: the AOPC protocol line (see :func:`~captum_attnflow.evaluation.faithfulness.aopc_protocol`).
        """
        rows = []
        for method, layered in per_layer.items():
            for metric in METRICS:
                values = [e["metrics"][method][metric] for e in examples]
                if not values:
                    continue
                array = np.array(values, dtype=np.float64)
                summary = summarize(array)
                for row in range(array.shape[1]):
                    low, high = bootstrap_interval(
                        array[:, row], confidence=confidence, resamples=resamples, seed=seed
                    )
                    rows.append({
                        "method": method, "layer": row + 1 if layered else None, "metric": metric,
                        "mean": float(summary.mean[row]), "std": float(summary.std[row]),
                        "ci_low": low, "ci_high": high,
                        "count": int(summary.count[row]), "undefined": int(summary.undefined[row]),
                    })
        return cls(rows, protocol)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def to_pandas(self):
        """The records as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install pandas (or use .records).") from error
        return pd.DataFrame(self.records, columns=list(COLUMNS))

    def to_csv(self, path: str | Path) -> None:
        """Write the records as CSV (empty cells for ``None``/NaN)."""
        with Path(path).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(json_safe(self.records))

    def to_json(self, path: str | Path) -> None:
        """Write the records as a JSON list (``null`` for NaN)."""
        Path(path).write_text(json.dumps(json_safe(self.records), indent=2) + "\n", encoding="utf-8")

    def __str__(self) -> str:
        """One block per metric: rows = methods, columns = layers, cells ``mean±std`` (the bootstrap
        intervals are in :attr:`records` and the CSV/JSON files)."""
        blocks = []
        for metric, meaning in METRICS.items():
            rows = [r for r in self.records if r["metric"] == metric]
            if not rows:
                continue
            layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
            columns = [f"L{layer}" for layer in layers] + (["all"] if any(r["layer"] is None for r in rows) else [])
            methods = list(dict.fromkeys(r["method"] for r in rows))
            cells = {(r["method"], "all" if r["layer"] is None else f"L{r['layer']}"): _cell(r) for r in rows}
            width = max(len(c) for c in list(cells.values()) + columns)
            name_width = max(len(m) for m in methods + ["method"])
            header = " ".join([f"{'method':{name_width}s}"] + [f"{c:>{width}s}" for c in columns])
            lines = [f"{metric}: {meaning}", header]
            for method in methods:
                row = [f"{cells.get((method, c), ''):>{width}s}" for c in columns]
                lines.append(" ".join([f"{method:{name_width}s}"] + row).rstrip())
            blocks.append("\n".join(lines))
        return "\n\n".join(([self.protocol] if self.protocol and blocks else []) + blocks)


def _short(digest: Any) -> str:
    return f"{digest[:12]}..." if isinstance(digest, str) else "none"


def _cell(record: Mapping[str, Any]) -> str:
    if record["count"] == 0:
        return "n/a"
    digits = 3 if record["metric"].startswith("aopc") else 2  # probability drops are small
    return f"{record['mean']:.{digits}f}±{record['std']:.{digits}f}"


def evaluation_table(records: Sequence[Mapping[str, Any]]) -> str:
    """An evaluation's summary records (:attr:`ResultTable.records`) as Markdown: one table per
    metric, rows = methods, columns = layers (``all`` for methods without layers), cells mean±std."""
    blocks = []
    for metric, meaning in METRICS.items():
        rows = [r for r in records if r["metric"] == metric]
        if not rows:
            continue
        layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
        columns = [f"L{layer}" for layer in layers] + (["all"] if any(r["layer"] is None for r in rows) else [])
        cells = {(r["method"], "all" if r["layer"] is None else f"L{r['layer']}"): _cell(r) for r in rows}
        lines = [f"**{meaning}**", "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for method in dict.fromkeys(r["method"] for r in rows):
            lines.append(f"| {method} | " + " | ".join(cells.get((method, c), "") for c in columns) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
