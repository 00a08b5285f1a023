"""`remits bench-verify`: one report or quote with warm caches next to the raw signature cost."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench_verify = sub.add_parser(
        "bench-verify", help="benchmark: one SNP report, TDX quote or CCA token (warm cache), or a SEV launch's or SE attestation's steps, vs the raw primitives"
    )
    bench_verify.add_argument("--iterations", type=int, default=2000)
    bench_verify.add_argument("--tee", default="snp", choices=["snp", "tdx", "sev", "cca", "se"])
    bench_verify.add_argument("--json", action="store_true")
    bench_verify.set_defaults(run=cmd_bench_verify)


def cmd_bench_verify(args: argparse.Namespace) -> int:
    if args.tee == "se":
        from services.bench.verify_se import run as run_se

        result = run_se(min(args.iterations, 500))
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"HKD chain cold {result['hkd_chain_cold_us']} us, cached {result['hkd_chain_cached_us']} us; "
                f"request build {result['request_build_us']} us (8 host keys {result['request_build_8_host_keys_us']} us; "
                f"raw P-521 keygen+ECDH {result['raw_p521_keygen_and_ecdh_us']} us); state seal+open {result['state_seal_and_open_us']} us; "
                f"response check {result['response_check_us']} us (10 images {result['response_check_10_images_us']} us; "
                f"raw HMAC-SHA512 {result['raw_hmac_sha512_us']} us)"
            )
        return 0
    if args.tee == "cca":
        from services.bench.verify_cca import run as run_cca

        result = run_cca(args.iterations)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"raw ES384 verify {result['raw_es384_verify_us']} us; CCA token cold {result['token_cold_us']} us "
                f"({result['cold_over_raw']}x two raw verifies), platform token cached {result['token_warm_us']} us "
                f"({result['warm_over_raw']}x one raw verify)"
            )
        return 0
    if args.tee == "sev":
        from services.bench.verify_sev import run as run_sev

        result = run_sev(min(args.iterations, 500))
        if args.json:
            print(json.dumps(result))
        else:
            for product in ("naples", "milan"):
                row = result[product]
                raw = ", ".join(f"{k.removeprefix('raw_').removesuffix('_us')} {v} us" for k, v in row.items() if k.startswith("raw_"))
                print(f"{product}: chain cold {row['chain_cold_us']} us, cached {row['chain_cached_us']} us (raw: {raw})")
            print(
                f"session open {result['session_open_us']} us (raw P-384 keygen+ECDH {result['raw_p384_keygen_and_ecdh_us']} us); "
                f"measurement check {result['measurement_check_us']} us; secret packet {result['secret_packet_us']} us"
            )
        return 0
    if args.tee == "tdx":
        from services.bench.verify_tdx import run as run_tdx

        result = run_tdx(args.iterations)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"two raw ECDSA P-256 verifies {result['raw_two_ecdsa_p256_verifies_us']} us; TDX quote: "
                f"warm {result['tdx_quote_warm_us']} us ({result['warm_over_raw']}x), "
                f"verify_quote repeated {result['tdx_quote_verify_quote_repeat_us']} us, cold {result['tdx_quote_cold_us']} us"
            )
        return 0
    from services.bench.verify_snp import run

    result = run(args.iterations)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"raw ECDSA P-384 verify {result['raw_ecdsa_p384_verify_us']} us; SNP report, warm cache "
            f"{result['snp_report_warm_us']} us ({result['warm_over_raw']}x raw); cold {result['snp_report_cold_us']} us"
        )
    return 0
