"""visalign.eval"""
