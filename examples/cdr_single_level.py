"""One level of GNvpro from the reference implementation's starting point on the real CDR data,
with the paper's settings (α = 1e-10, ≤ 20 Krylov vectors, tolerance 1e-2, 200 work units).

    python examples/cdr_single_level.py
"""

from gnvpro import GNvpro, GNvproConfig
from gnvpro_experiments.problems.cdr import (
    load_cdr_mat,
    load_reference,
    reference_network,
    reference_split,
)


def main() -> None:
    ref = load_reference()
    Y, C = load_cdr_mat()
    data = reference_split(ref, Y, C)
    opt = GNvpro(reference_network(ref), alpha_w=1e-10, alpha_theta=1e-10,
                 config=GNvproConfig.trust_region())
    hist = opt.run(data.x_train, data.y_train, max_work=200)
    final = hist.final
    print(f"GNvpro level 1: Φ = {final.loss:.4f} after {final.work_units:.0f} work units "
          f"(reference level-1 value {float(ref['J_end_levels'][0]):.4f})")


if __name__ == "__main__":
    main()
