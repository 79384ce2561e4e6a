-- 0013: the index is built by 0013_poll_queue_by_give_up.py, concurrently, before this runs.
SET lock_timeout = '2s';
