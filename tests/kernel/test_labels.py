from kernel.labels import LABEL_COLS, LR_PAIRS, SEG_LABEL_VALUES, flip_permutation


def test_flip_permutation_swaps_pairs_and_is_involution():
    perm = flip_permutation()
    for left, right in LR_PAIRS:
        assert perm[LABEL_COLS.index(left)] == LABEL_COLS.index(right)
    assert [perm[p] for p in perm] == list(range(len(LABEL_COLS)))
    assert perm[LABEL_COLS.index("Aneurysm Present")] == LABEL_COLS.index("Aneurysm Present")


def test_segmentation_values_match_competition_table():
    assert sorted(SEG_LABEL_VALUES.values()) == list(range(1, 14))
    assert SEG_LABEL_VALUES["Other Posterior Circulation"] == 1
    assert SEG_LABEL_VALUES["Right Infraclinoid Internal Carotid Artery"] == 5
    assert SEG_LABEL_VALUES["Left Middle Cerebral Artery"] == 10
    assert SEG_LABEL_VALUES["Anterior Communicating Artery"] == 13
