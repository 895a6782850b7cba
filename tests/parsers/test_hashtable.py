"""The shared open-addressing table against a dict: inserts, deletes (backward shift), growth."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers import hashtable


def put(table, key, value):
    slot = hashtable.slot_for(table, np.int64(key))
    table[slot, 0] = key
    table[slot, 1] = value


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=300))
def test_table_matches_a_dict(ops):
    table = hashtable.new_table(512, 2)
    model = {}
    for insert, key in ops:
        if insert:
            put(table, key, key * 3)
            model[key] = key * 3
        elif key in model:
            hashtable.remove(table, hashtable.find(table, np.int64(key)))
            del model[key]
    for key in range(201):
        slot = hashtable.find(table, np.int64(key))
        assert (slot >= 0) == (key in model)
        if slot >= 0:
            assert table[slot, 1] == model[key]
    assert int((table[:, 0] != hashtable.EMPTY).sum()) == len(model)


def test_rehash_keeps_every_entry():
    small = hashtable.new_table(64, 3)
    for key in range(1, 30):
        slot = hashtable.slot_for(small, np.int64(key * 1_000_003))
        small[slot] = (key * 1_000_003, key, -key)
    big = hashtable.new_table(128, 3)
    hashtable.rehash(small, big)
    for key in range(1, 30):
        slot = hashtable.find(big, np.int64(key * 1_000_003))
        assert tuple(big[slot]) == (key * 1_000_003, key, -key)
