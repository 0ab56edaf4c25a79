"""`streamrec serve`: the storefront's lookup service over the ``recommendations`` topic.

A follower thread reads the topic (read_committed) into a store, SQLite or Redis by
``serve.store`` (:mod:`streamrec.serve.store`); a second one reads the catalog topic into
the same store for the items' titles, brands and prices; a Starlette app (:mod:`streamrec.serve.app`) answers
lookups, streams list changes to the live page (server-sent events) and sends the
page's clicks into the input topic. Starlette and uvicorn come with the ``serve``
extra; `streamrec serve` names it when they are missing.
"""

