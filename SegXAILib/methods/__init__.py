"""Explanation methods. Each takes an ExplainInputs and returns one MethodResult per target."""
