"""Where CASS's parity numbers part on a CPU whose kernels round differently from the fixture machine's.

CASS pairs DINO heads with CLIP heads by a Hungarian assignment over a 12 x 12 cost matrix whose optimum is,
on random weights, tied to within one float32 ulp between several pairings: the last bit of the keys and
eigenvalues decides which one wins, and that bit depends on the CPU's vector kernels (MKL / oneDNN dispatch).
This script runs the parity kit's `check("cass")` with ovss's own head matching replaced by the official one
recorded in the fixture (`internals.lsa.col_ind`) **only where the two tie** (total cost within `TIE` of each
other); everything else is ovss's arithmetic. It prints the tie gaps and the kit's verdict:

    python tests/parity_cass_ties.py            # exit 0 = parity given the tie, 1 = no parity, 2 = not a tie
"""
from __future__ import annotations

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
KIT = os.environ.get("OVSS_PARITY_KIT", os.path.join(HERE, "..", "..", "shared", "parity"))
TIE = 4 * 12 * 2.0 ** -24     # a few float32 ulps (at cost ~ 0.5-1) on each of the 12 matched pairs


def main() -> int:
    sys.path.insert(0, KIT)
    import check

    from ovss.methods import cass as C
    meta = json.load(open(os.path.join(KIT, "fixtures", "cass.json")))
    official = {}   # CLIP patch count of the image -> its recorded matching
    for im in meta["images"].values():
        h, w = im["clip_grid_hw"]
        official[h * w] = torch.tensor(im["internals"]["lsa"]["col_ind"])
    ours_match, ours_spectral = C.match_heads, C.CASS.spectral_attention
    current = {}
    gaps = []

    def spectral(self, k, kd):
        current["N"] = k.shape[2]
        return ours_spectral(self, k, kd)

    def match(cost):
        mine = ours_match(cost)
        off = official.get(current.get("N"))
        if off is None or cost.shape[0] != 1:
            return mine
        rows = torch.arange(cost.shape[1])
        gap = float(cost[0, rows, off].double().sum() - cost[0, rows, mine[0]].double().sum())
        gaps.append(gap)
        return off[None].to(mine.device) if abs(gap) <= TIE else mine

    C.match_heads, C.CASS.spectral_attention = match, spectral
    ok, fig = check.check("cass", os.path.join(KIT, "fixtures"),
                          os.environ.get("OVSS_PARITY_DIR", os.path.expanduser("~/.cache/ovss-parity")))
    ties = [g for g in gaps if g != 0]
    print(f"head-matching ties: {len(ties)} of {len(gaps)} matchings differ from the official one, total-cost gaps "
          f"{sorted({f'{g:.2e}' for g in ties}) or 'none'} (tie = |gap| <= {TIE:.1e})")
    print(f"with the official matching where tied: {fig}")
    if any(abs(g) > TIE for g in gaps):
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
