"""AWS-compatible HTTP endpoint for ebsengine: the EC2 volume/snapshot API and the EBS direct APIs.

``ebsengine.aws.server.ApiServer(engine, host, port)`` serves both on one port; see
:mod:`ebsengine.aws.server`. This package imports only the engine facade, botocore's
service models and werkzeug, never the reverse.
"""
