import {mount} from "svelte";
import ImageGenerator from "../build/recipes/ImageGenerator.svelte";

mount(ImageGenerator, {target: document.getElementById("root")});
