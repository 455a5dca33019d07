"""The HTTP wire formats that both the service (serve/) and the offline simulator (simulator/) speak, and the
socket each listens on.

    errors.py     OpenAI's error reply, {"error": {"message", "type", "param", "code"}}
    multipart.py  a multipart/form-data upload read as it streams in (python-multipart), its file part capped
    batch.py      OpenAI's Batch API objects: the batch and file objects, a list page, a create request's check
    batch_api.py  OpenAI's Files and Batch API themselves: the routes and a batch's lifecycle, over a Backend
                  that each side implements (where files and batches are kept, how a line is answered)
    listen.py     the listening socket each serves on, bound before its server starts (port 0 known at once)

Kernel code: it imports fair/ and third-party libraries only, never a stage, so the simulator and the service
share these shapes without sharing anything else.
"""
