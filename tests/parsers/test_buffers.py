"""BufferPool: a buffer is handed out again only once nothing but the pool holds it."""
import numpy as np

from parsers.buffers import BufferPool

ROW = np.dtype([("a", "<i8"), ("_reserved", "u1", (4,))])


def test_a_buffer_comes_back_only_when_no_view_of_it_is_left():
    pool = BufferPool(ROW, keep=2, prepare=lambda rows: rows.__setitem__("_reserved", 0))
    first = pool.take(8)
    first["a"] = 7
    view = first[:3]
    del first
    second = pool.take(8)  # the view keeps the first buffer busy
    assert pool.made == 2 and pool.reused == 0 and not np.shares_memory(second, view)
    queued = [second[2:]]  # e.g. a batch waiting in a sink queue
    del second
    del view
    again = pool.take(8)
    assert pool.reused == 1 and again["a"][0] == 7  # the first buffer, as it was left
    assert not np.shares_memory(again, queued[0])
    queued.clear()
    assert pool.take(8) is not again and pool.reused == 2  # the second one, now free
    assert (again["_reserved"] == 0).all()


def test_beyond_keep_buffers_are_made_and_let_go():
    pool = BufferPool(ROW, keep=1)
    held = [pool.take(4) for _ in range(3)]
    assert pool.made == 3 and len(pool._buffers) == 1
    held.clear()
    pool.take(4)
    assert pool.reused == 1
    pool.take(5)  # another size: a new buffer
    assert pool.made == 4


def test_rows_of_a_pooled_buffer_and_small_requests_apart():
    pool = BufferPool(ROW, keep=2)
    big = pool.rows(100, 128)
    assert len(big) == 100 and len(big.base) == 128 and pool.made == 1
    small = pool.rows(3, 128)  # a live packet's batch: its own array, no large buffer pinned
    assert len(small) == 3 and small.base is None and len(pool._buffers) == 1
    del big
    assert len(pool.rows(128, 128)) == 128 and pool.reused == 1


def test_a_full_pool_lets_a_free_buffer_of_another_size_go_for_a_new_size():
    pool = BufferPool(ROW, keep=2)
    held = [pool.take(4), pool.take(4)]
    held.pop()
    grown = pool.take(16)  # the requests grew: the free 4-row buffer makes way
    assert sorted(len(b) for b in pool._buffers) == [4, 16]
    del grown
    pool.take(16)
    assert pool.reused == 1 and pool.made == 3
