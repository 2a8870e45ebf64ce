"""Prefect flows that orchestrate the nectargan_core stages.

Empty so far: the flow (validate -> train -> examples -> evaluate) and its deployments are
built on top of the stage functions by the Prefect issue. Nothing here runs yet.
"""
