"""sdfleet's benchmark harness, installed as `sdfleet.bench` (not part of the product: nothing
under `sdfleet.batch`, `sdfleet.anim` or `sdfleet.jobs` imports it). docs/PERFORMANCE.md has
the method, the commands and the figures; `benchmarks/run_all.sh` reruns them all.

    cli          `sdfleet bench`, added to the sdfleet command through the `sdfleet.commands`
                 entry-point group
    options      the command's options: one pydantic model, the flags made from it
    workload     what every contender makes, the bench manifest, samples and the steady rate
    contenders   (a) plain diffusers per row, (b) batched, (c) plain Ray Data, sdfleet local, ray
    throughput   the default mode: every contender on the same rows, rotated repeats
    overhead     --overhead: builtin:null at many rows, a fresh process per size
    animation    --animation: the 2D render against a plain img2img loop, and the encoder
    report       spreads, tables, the machine, the JSON report
    ray_factors  a script: Ray Data's checkpointing and block size, one factor at a time
"""
