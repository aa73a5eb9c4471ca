"""visalign.methods"""
