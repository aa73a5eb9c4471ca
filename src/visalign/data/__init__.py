"""visalign.data"""
