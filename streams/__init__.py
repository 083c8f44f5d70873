"""Faust app: topics, agents, tables"""
