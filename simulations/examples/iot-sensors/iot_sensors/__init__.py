"""IoT sensors: a smart watch's motion classified on the device by a small 1-D CNN trained with fedge."""
