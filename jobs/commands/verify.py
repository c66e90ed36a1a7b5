"""`facefab verify FILE`: is this video a facefab output? Reads its provenance marks.

Prints the synthetic container tag, the invisible watermark (payload, bit accuracy, frames
checked) and the C2PA content credential with its validation state when there is one.
Exit status: 0 when the watermark or a valid C2PA credential is found, 1 when neither is
(a tag alone proves nothing: any remux can add or strip it), 2 when FILE cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from facefab.manifests.storage import storage_options_from_env

HELP = "check a video for facefab's synthetic tag, watermark and C2PA credential"


def add_parser(sub) -> None:
    from ..cli import add_storage_args

    p = sub.add_parser("verify", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    add_storage_args(p)
    p.set_defaults(func=run)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from facefab.media.provenance import DEFAULT_PAYLOAD, ENV_TRUST

    p.add_argument("file", metavar="FILE", help="video file: local path or fsspec URI (s3://...)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-frames", type=int, default=50, help="frames checked for the watermark (default 50)")
    p.add_argument("--payload-bits", type=int, default=None,
                   help="length of the embedded payload in bits (default: that of --expect)")
    p.add_argument("--expect", default=DEFAULT_PAYLOAD,
                   help=f"expected watermark payload (default {DEFAULT_PAYLOAD!r}; '' reads it blind, "
                        "accepted only with a valid CRC)")
    p.add_argument("--trust", default=None, metavar="PEM",
                   help=f"trust anchors for the C2PA signer (default ${ENV_TRUST})")


def run(args: argparse.Namespace) -> int:
    from facefab.media.io import MediaError
    from facefab.media.provenance import DEFAULT_PAYLOAD, verify_file

    expect = getattr(args, "expect", DEFAULT_PAYLOAD) or None
    bits = getattr(args, "payload_bits", None) or 8 * len((expect or DEFAULT_PAYLOAD).encode("utf-8"))
    trust = None
    if getattr(args, "trust", None):
        with open(args.trust, "rb") as f:
            trust = f.read()
    try:
        opts = storage_options_from_env(getattr(args, "storage_options", None))
        report = verify_file(args.file, opts, max_frames=getattr(args, "max_frames", 50),
                             payload_len_bits=bits, expected=expect, trust_anchors_pem=trust)
    except (MediaError, ValueError, OSError) as e:
        print(f"facefab verify: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(format_report(report))
    return 0 if report.found else 1


def format_report(report) -> str:
    lines = [(f"{report.uri}  ({report.info.get('width')}x{report.info.get('height')}, "
              f"{report.info.get('frames')} frames @ {report.info.get('fps'):.3g} fps)")]
    if report.tag:
        lines.append("  tag        synthetic: " + ", ".join(f"{k}={v!r}" for k, v in sorted(report.tag.items())))
    else:
        lines.append("  tag        none")
    wm = report.watermark
    acc = "n/a" if wm.bit_accuracy != wm.bit_accuracy else f"{wm.bit_accuracy:.3f}"
    vote = "n/a" if wm.vote_accuracy != wm.vote_accuracy else f"{wm.vote_accuracy:.3f}"
    if wm.found:
        how = "CRC ok" if wm.crc_ok else "matches expected payload"
        lines.append(f"  watermark  FOUND payload {wm.payload!r} ({how}); bit accuracy {acc} per frame, "
                     f"{vote} voted; {wm.frames_checked} frames checked; chance p={wm.p_value:.1e}")
    else:
        lines.append(f"  watermark  not found (bit accuracy vs expected {acc} per frame, {vote} voted; "
                     f"{wm.frames_checked} frames checked" + (f"; {wm.note}" if wm.note else "") + ")")
    c = report.c2pa
    if c is None:
        lines.append("  c2pa       no manifest")
    elif c.get("state") == "error":
        lines.append(f"  c2pa       unreadable: {c.get('error')}")
    else:
        signer = c.get("signer") or {}
        trust = "" if c["trusted"] or not c["valid"] else " (signer not in trust anchors)"
        lines.append(f"  c2pa       {c['state']}{trust}; "
                     f"signed by {signer.get('common_name') or signer.get('issuer')!r}; actions "
                     f"{', '.join(c['actions']) or 'none'}; source {', '.join(c['digital_source_types']) or 'n/a'}"
                     + (f"; failures {', '.join(c['failures'])}" if c["failures"] else ""))
    marks = [name for name, ok in (("watermark", wm.found), ("c2pa", report.c2pa_valid)) if ok]
    lines.append("verdict: " + (f"facefab provenance found ({', '.join(marks)})" if marks
                                else "no facefab watermark or valid credential"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facefab verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec storage options")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
