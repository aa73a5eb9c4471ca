"""visalign.verifier"""
