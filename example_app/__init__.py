"""The example app: a real image workflow streamed through fastapi-ikstream.

``example_app.workflow`` runs the workflow in-process (decode → resize → face and cat
detection → Canny edges → encode); ``example_app.scale_server`` serves the same workflow
over Ikomia SCALE's HTTP protocol, so the app can also reach it through the real
``ikomia-client``.
"""
