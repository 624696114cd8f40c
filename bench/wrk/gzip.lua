-- The gzip scenario: ask for gzip only, as a client that lacks brotli, so
-- every stack answers with the same encoding (nginx has no brotli).
wrk.headers["Accept-Encoding"] = "gzip"
