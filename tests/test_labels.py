from kernel.labels import LABEL_COLS, LR_PAIRS, SEG_LABEL_VALUES, flip_permutation


def test_flip_permutation_swaps_pairs_and_is_involution():
    perm = flip_permutation()
    for left, right in LR_PAIRS:
        assert perm[LABEL_COLS.index(left)] == LABEL_COLS.index(right)
    assert [perm[p] for p in perm] == list(range(len(LABEL_COLS)))
    assert perm[LABEL_COLS.index("Aneurysm Present")] == LABEL_COLS.index("Aneurysm Present")


def test_segmentation_values_are_reverse_label_order():
    assert [SEG_LABEL_VALUES[c] for c in LABEL_COLS[:13]] == list(range(13, 0, -1))
