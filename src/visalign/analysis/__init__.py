"""visalign.analysis"""
