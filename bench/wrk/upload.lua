-- The 1 MB upload scenario: every request POSTs 1 MiB to /upload, which
-- reads the whole body and answers its length. wrk adds Content-Length.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.body = string.rep("x", 1048576)
