"""The pseudo-label pass on Ray Data and the Parquet table it writes (RWMS steps 2, 3 and 5).

  table.py    the table: schema, map encoding, plain-pyarrow readers (students read with these)
  workers.py  what runs in Ray Data's tasks and actors: decode_images, the Labeler, label_images
  driver.py   the pass as the driver runs it: checks, input fingerprint, the Ray Data pipeline, stage record
  commit.py   a table made complete at once: temporary directory, rename (or in place on an object store)
  truth.py    the Oracle's table: true masks where a pass writes pseudo labels
  split.py    the split by reliability r into U1 (reliable) and U2 (RWMS step 3)

Nothing in the package imports Ray at module level; the driver starts it when a pass has work.
"""
