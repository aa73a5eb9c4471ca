"""visalign.world"""
